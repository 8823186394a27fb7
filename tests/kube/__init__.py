"""The real Kubernetes test ground: control-plane runner, pytest fixtures and smoke tests."""
