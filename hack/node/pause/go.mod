module o1pool.local/pause

go 1.26.0
