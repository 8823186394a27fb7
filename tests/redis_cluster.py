"""The Redis Cluster launcher moved to ``o1pool/rediscluster.py`` (the scale benchmark starts one too);
this name stays for imports that still use it."""

from o1pool.rediscluster import NODE_TIMEOUT_MS, LocalCluster, Node, Tls

__all__ = ["NODE_TIMEOUT_MS", "LocalCluster", "Node", "Tls"]
