"""A pool's cache service: the layers that should not live in every pod (L3, persistent)."""
