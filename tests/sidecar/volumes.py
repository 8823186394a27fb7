"""Mounted volumes as the kubelet writes them, for tests of what a sidecar reads from them."""

from __future__ import annotations

import os
from pathlib import Path


class MountedVolume:
    """A Secret or ConfigMap volume as the kubelet writes it: ``<key>`` -> ``..data/<key>``, and
    ``..data`` a symlink swapped atomically to a new timestamped directory on every update."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.version = 0

    def write(self, **files: str) -> None:
        self.version += 1
        target = self.root / f"..2026_12_03_{self.version:02d}"
        target.mkdir()
        for name, value in files.items():
            (target / name).write_text(value)
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(Path("..data") / name)
        staged = self.root / "..data_tmp"
        staged.symlink_to(target.name)
        os.replace(staged, self.root / "..data")
