-- The pool's sync on its own (sync.lua), when no limiter heartbeat carries it.
return pool_sync(1, 1)
