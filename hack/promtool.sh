#!/usr/bin/env bash
# Builds (once per machine, cached) promtool, which tests/alerts/ runs on the chart's alerts
# (`promtool test rules`, `promtool check rules`), from the Prometheus Go module on the Go module proxy,
# as hack/kube-testground.sh builds the Kubernetes binaries.
#
#   bash hack/promtool.sh build   build it if missing (instant when cached)
#   bash hack/promtool.sh path    print its path (exit 1 if not built yet)
#
# Environment: O1POOL_CACHE (default ~/.cache/o1pool); GO (default: `go` on PATH or /usr/local/go/bin/go).
set -euo pipefail

# The Go module's version v0.316.0 is Prometheus 3.16.0.
PROMETHEUS_MODULE_VERSION="v0.316.0"
BIN_DIR="${O1POOL_CACHE:-${HOME}/.cache/o1pool}/promtool/${PROMETHEUS_MODULE_VERSION}"
PROMTOOL="${BIN_DIR}/promtool"

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

build() {
    if [[ -x "$PROMTOOL" ]]; then
        return
    fi
    local go started=$SECONDS
    go="$(find_go)"
    log "building promtool (prometheus ${PROMETHEUS_MODULE_VERSION}): a few minutes, once"
    mkdir -p "${BIN_DIR}/gobin"
    GOBIN="${BIN_DIR}/gobin" GOFLAGS='' "$go" install -trimpath -ldflags="-s -w" \
        "github.com/prometheus/prometheus/cmd/promtool@${PROMETHEUS_MODULE_VERSION}"
    mv "${BIN_DIR}/gobin/promtool" "$PROMTOOL"
    rmdir "${BIN_DIR}/gobin"
    log "built ${PROMTOOL} in $((SECONDS - started)) s"
}

case "${1:-}" in
    build) build ;;
    path) [[ -x "$PROMTOOL" ]] || die "not built yet: bash hack/promtool.sh build"; printf '%s\n' "$PROMTOOL" ;;
    *) die "usage: $0 build|path" ;;
esac
