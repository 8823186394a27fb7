"""A pool's cache service: the layers that should not live in every pod (L3, persistent, and the
semantic layer). The headers both sides read are here, so the sidecar's client need not import the
server."""

TTL_HEADER = "x-o1pool-ttl-s"
SIMILARITY_HEADER = "x-o1pool-similarity"
