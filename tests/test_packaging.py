"""The distribution's parts: the sidecar (and the emulator) run without the operator's dependencies,
which are the extra ``operator``, so the sidecar image started in every injected pod carries neither
kopf nor the Kubernetes client; without them, ``o1pool operator`` says what to install."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPERATOR_ONLY = ("kopf", "kubernetes")


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_the_sidecar_and_the_emulator_import_nothing_of_the_operator() -> None:
    done = run(
        "import sys\n"
        "import o1sidecar.cli, o1sidecar.app, o1sidecar.limits, o1emulator.cli, o1emulator.server\n"
        "import o1pool.cli, o1pool.demo\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {OPERATOR_ONLY!r}))\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_operator_without_its_extra_says_what_to_install() -> None:
    blocked = (
        "import sys\nsys.modules['kopf'] = None\nfrom o1pool.cli import main\nsys.exit(main(['operator']))"
    )
    done = run(blocked)
    assert done.returncode == 2
    assert "o1pool operator: needs kopf" in done.stderr and "pip install 'o1pool[operator]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_operator_dependencies_are_only_in_its_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [d.split(">")[0].split("[")[0].strip() for d in project["dependencies"]]
    assert not set(names) & set(OPERATOR_ONLY)
    extra = [d.split(">")[0] for d in project["optional-dependencies"]["operator"]]
    assert sorted(extra) == sorted(OPERATOR_ONLY)
