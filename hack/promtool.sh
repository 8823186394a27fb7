#!/usr/bin/env bash
# Builds (once per machine, cached) promtool, which tests/alerts/ runs on the chart's alerts
# (`promtool test rules`, `promtool check rules`), from the Prometheus Go module on the Go module proxy,
# as hack/kube-testground.sh builds the Kubernetes binaries; and, on demand, the Prometheus server of
# the same module, which hack/dashboard-pngs.py scrapes real sidecars with (no web UI assets: its API
# is all that script reads).
#
#   bash hack/promtool.sh build              build promtool if missing (instant when cached)
#   bash hack/promtool.sh path               print its path (exit 1 if not built yet)
#   bash hack/promtool.sh build-prometheus   build the prometheus server if missing
#   bash hack/promtool.sh path-prometheus    print its path (exit 1 if not built yet)
#
# Environment: O1POOL_CACHE (default ~/.cache/o1pool); GO (default: `go` on PATH or /usr/local/go/bin/go).
set -euo pipefail

# The Go module's version v0.316.0 is Prometheus 3.16.0.
PROMETHEUS_MODULE_VERSION="v0.316.0"
BIN_DIR="${O1POOL_CACHE:-${HOME}/.cache/o1pool}/promtool/${PROMETHEUS_MODULE_VERSION}"

log() { printf '[promtool] %s\n' "$*" >&2; }
die() { printf '[promtool] error: %s\n' "$*" >&2; exit 1; }

find_go() {
    local candidate="${GO:-$(command -v go || true)}"
    if [[ -z "$candidate" && -x /usr/local/go/bin/go ]]; then
        candidate=/usr/local/go/bin/go
    fi
    [[ -n "$candidate" && -x "$candidate" ]] || die "Go is not installed (looked for \$GO, 'go' on PATH and /usr/local/go/bin/go).
Install Go >= 1.26 from https://go.dev/dl/ (or set GO=/path/to/go) and run this again."
    printf '%s\n' "$candidate"
}

# build NAME: github.com/prometheus/prometheus/cmd/NAME into ${BIN_DIR}/NAME, unless it is there.
build() {
    local name="$1"
    if [[ -x "${BIN_DIR}/${name}" ]]; then
        return
    fi
    local go started=$SECONDS gobin="${BIN_DIR}/gobin-${name}"
    go="$(find_go)"
    log "building ${name} (prometheus ${PROMETHEUS_MODULE_VERSION}): a few minutes, once"
    mkdir -p "$gobin"
    GOBIN="$gobin" GOFLAGS='' "$go" install -trimpath -ldflags="-s -w" \
        "github.com/prometheus/prometheus/cmd/${name}@${PROMETHEUS_MODULE_VERSION}"
    mv "${gobin}/${name}" "${BIN_DIR}/${name}"
    rmdir "$gobin"
    log "built ${BIN_DIR}/${name} in $((SECONDS - started)) s"
}

# path NAME: print the binary's path, or fail saying how to build it.
path() {
    local name="$1" target="$2"
    [[ -x "${BIN_DIR}/${name}" ]] || die "not built yet: bash hack/promtool.sh ${target}"
    printf '%s\n' "${BIN_DIR}/${name}"
}

case "${1:-}" in
    build) build promtool ;;
    path) path promtool build ;;
    build-prometheus) build prometheus ;;
    path-prometheus) path prometheus build-prometheus ;;
    *) die "usage: $0 build|path|build-prometheus|path-prometheus" ;;
esac
