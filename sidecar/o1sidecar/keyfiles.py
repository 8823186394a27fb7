"""Key rotation without a restart: a key mounted from a Secret is read again when its file changes.

The kubelet updates a mounted Secret by pointing a symlink (``..data``) at a new directory, within
about a minute of the Secret's change. Every ``KEY_CHECK_S`` this stats each key file (following the
links) and, when what it finds changed (another file, or the same file rewritten), reads it again. A
new value is used from the next call on and starts out of quarantine: a refusal was about the old
value (the pool's quarantine entries name a value's fingerprint, so they do not hold the new one
either). A file that cannot be read, or is empty, leaves the value in use, with a warning naming the
file (never a value). Keys from environment variables are read once: a process's environment does
not change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from o1sidecar.config import ConfigError, SidecarConfig
from o1sidecar.upstream import AccountRoute

log = logging.getLogger("o1sidecar.keys")

KEY_CHECK_S = 5.0

Stamp = tuple[int, int, int, int]  # device, inode, size, modification time (ns)


class KeyFiles:
    """Watches the file-mounted keys of ``config`` and gives ``routes`` their new values."""

    def __init__(
        self,
        config: SidecarConfig,
        routes: Mapping[str, AccountRoute],
        on_new_value: Callable[[str], None] = lambda _label: None,
        every_s: float = KEY_CHECK_S,
    ) -> None:
        self._watched = [
            (routes[account.name], ref)
            for account in config.accounts
            for ref in account.keys
            if ref.file is not None
        ]
        self._on_new_value = on_new_value
        self._every_s = every_s
        self._stamps: dict[str, Stamp | None] = {}
        self._task: asyncio.Task[None] | None = None

    def check(self) -> list[str]:
        """Read again every key file that changed; the ``account/key`` labels given a new value."""
        renewed = []
        for route, ref in self._watched:
            label = f"{route.account.name}/{ref.name}"
            assert ref.file is not None
            stamp = file_stamp(ref.file)
            if label in self._stamps and stamp == self._stamps[label]:
                continue
            self._stamps[label] = stamp
            try:
                value = ref.read()
            except ConfigError as exc:
                log.warning("%s; calls keep using the value read before", exc)
                continue
            if route.rekey(ref.name, value):
                log.info("key %s: a new value from %s is used from now on", label, ref.file)
                self._on_new_value(label)
                renewed.append(label)
        return renewed

    async def start(self) -> None:
        if self._watched:
            self.check()  # the stamps of what load_routes read (or anything newer)
            self._task = asyncio.get_running_loop().create_task(self._forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self._every_s)
            self.check()


def file_stamp(path: Path) -> Stamp | None:
    """What tells a file from its next version (following symlinks); None if it cannot be found."""
    try:
        st = path.stat()
    except OSError:
        return None  # reading it says why
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns
