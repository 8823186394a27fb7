"""The ``o1pool`` command: one entry point, a subcommand per component.

Each subcommand's module owns its own argument parser (``main(argv)``), imported only when used so
that ``o1pool emulator`` does not pay for kopf and the Kubernetes client.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("o1pool.demo", "Run emulator, Redis, two sidecars and a mixed-priority burst; print a summary."),
    "emulator": ("o1emulator.cli", "Serve an OpenAI-compatible upstream that enforces rate limits."),
    "sidecar": ("o1sidecar.cli", "Serve the OpenAI-compatible proxy on loopback, with shared limits."),
    "cache-service": (
        "o1sidecar.cachesvc.server",
        "Serve a pool's persistent answer cache (L3) to its sidecars.",
    ),
    "operator": ("o1operator.cli", "Run the kopf operator that reconciles O1Pool resources."),
    "virtual-key": (
        "o1pool.virtualkey",
        "Make a gateway client's virtual key and the Secret holding its digest.",
    ),
    "load": ("o1pool.load", "Call OPENAI_BASE_URL with the openai SDK at a fixed rate (an app for pods)."),
    "fuzz": ("o1pool.fuzz", "Send hostile requests to a sidecar: no 5xx, no traceback, bounded memory."),
    "bench": ("o1pool.bench", "Benchmark limits against many upstreams, and added latency, side by side."),
    "cache-eval": (
        "o1pool.cacheeval",
        "Judge the semantic cache on paraphrases and near misses (precision, recall).",
    ),
    "forecast-eval": ("o1pool.forecast_eval", "Judge demand forecasts and predictive scaling on traces."),
}

# top-level module -> the extra that installs it
EXTRAS = {
    "kopf": "operator",
    "kubernetes": "operator",
    "openai": "load",
    "numpy": "semantic",
    "tokenizers": "semantic",
    "safetensors": "semantic",
    "onnxruntime": "semantic",
    "onnx": "semantic",
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: o1pool <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in SUBCOMMANDS.items()]
    lines += [
        "",
        "Run 'o1pool <command> --help' for a command's options; 'o1pool --version' for the version.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0
    if args[0] in {"-V", "--version", "version"}:
        print(f"o1pool {importlib.metadata.version('o1pool')}")
        return 0
    command, rest = args[0], args[1:]
    if command not in SUBCOMMANDS:
        print(f"o1pool: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(SUBCOMMANDS[command][0])
    except ModuleNotFoundError as exc:
        extra = EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(
            f"o1pool {command}: needs {exc.name}, which this installation lacks (the sidecar image carries "
            f"only the sidecar's dependencies): pip install 'o1pool[{extra}]'",
            file=sys.stderr,
        )
        return 2
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
