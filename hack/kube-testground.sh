#!/usr/bin/env bash
# Builds (once per machine, cached) the real Kubernetes the tests run against: the control plane
# (kube-apiserver, kube-controller-manager, kubectl) and a node's components (kubelet,
# kube-scheduler, kube-proxy) from the k8s.io/kubernetes Go module, etcd from
# go.etcd.io/etcd/server/v3/etcdmain, helm, CoreDNS, and the pause binary of hack/node/pause.
# Everything comes from the Go module proxy. The node's runtime (containerd, runc, CNI plugins) comes
# from Debian packages (make sysdeps); tests/kube/node.py runs the node.
#
#   bash hack/kube-testground.sh build   build what is missing (seconds when everything is cached)
#   bash hack/kube-testground.sh path    print the bin dir (exit 1 if not built yet)
#   bash hack/kube-testground.sh check   exit 0 when every binary is built, 1 otherwise
#   bash hack/kube-testground.sh versions  print the pinned versions
#   bash hack/kube-testground.sh up      start a control plane in the foreground until Ctrl-C
#
# Environment: O1POOL_CACHE (default ~/.cache/o1pool) holds the binaries; GO (default: `go` on PATH
# or /usr/local/go/bin/go); GOCACHE/GOMODCACHE as usual for Go.
set -euo pipefail

K8S_VERSION="v1.36.3"
ETCD_VERSION="v3.6.16"
HELM_VERSION="v3.22.0"
COREDNS_VERSION="v1.15.0"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_ROOT="${O1POOL_CACHE:-${HOME}/.cache/o1pool}/kube"
VERSION_TAG="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}_coredns-${COREDNS_VERSION}"
PREFIX="${CACHE_ROOT}/${VERSION_TAG}"
BIN_DIR="${PREFIX}/bin"
SRC_DIR="${PREFIX}/src"
K8S_COMMANDS=(kube-apiserver kube-controller-manager kubectl kubelet kube-scheduler kube-proxy)
BINARIES=("${K8S_COMMANDS[@]}" etcd helm coredns pause)

log() { printf '[kube-testground] %s\n' "$*" >&2; }
die() { printf '[kube-testground] error: %s\n' "$*" >&2; exit 1; }

find_go() {
    local candidate="${GO:-}"
    if [[ -z "$candidate" ]]; then
        candidate="$(command -v go || true)"
    fi
    if [[ -z "$candidate" && -x /usr/local/go/bin/go ]]; then
        candidate=/usr/local/go/bin/go
    fi
    [[ -n "$candidate" && -x "$candidate" ]] || die "Go is not installed (looked for \$GO, 'go' on PATH and /usr/local/go/bin/go).
Install Go >= 1.26 from https://go.dev/dl/ (or set GO=/path/to/go) and run this again."
    local have
    have="$("$candidate" env GOVERSION)"
    case "$have" in
        go1.2[6-9]*|go1.[3-9][0-9]*) ;;
        *) die "$candidate is $have; Kubernetes ${K8S_VERSION} needs Go >= 1.26. Install a newer Go or set GO=..." ;;
    esac
    printf '%s\n' "$candidate"
}

all_built() {
    local b
    for b in "${BINARIES[@]}"; do
        [[ -x "${BIN_DIR}/${b}" ]] || return 1
    done
}

# Linker flags that stamp the version into k8s.io/component-base/version, so `kubectl version`
# and helm's capability detection see a real server version instead of v0.0.0-master.
k8s_ldflags() {
    local major minor
    major="${K8S_VERSION#v}"; major="${major%%.*}"
    minor="${K8S_VERSION#v*.}"; minor="${minor%%.*}"
    local pkg=k8s.io/component-base/version
    printf '%s' "-s -w -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=${major}" \
        " -X ${pkg}.gitMinor=${minor} -X ${pkg}.gitTreeState=clean" \
        " -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
}

# Wrapper module for k8s.io/kubernetes: the release's go.mod replaces every k8s.io/<staging> module
# with ./staging/src/..., which does not exist outside its repository (and replace directives of a
# dependency are ignored anyway), so the wrapper maps each one to its published v0.Y.Z.
write_k8s_wrapper() {
    local go="$1" dir="$2"
    local gomod staging_version
    gomod="$(GOFLAGS='' "$go" mod download -json "k8s.io/kubernetes@${K8S_VERSION}" \
        | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
    [[ -f "$gomod" ]] || die "could not download k8s.io/kubernetes@${K8S_VERSION} from the Go module proxy ($("$go" env GOPROXY))"
    staging_version="v0.${K8S_VERSION#v1.}"
    mkdir -p "$dir"
    {
        printf 'module o1pool.local/kube-testground/k8s\n\ngo 1.26.0\n\n'
        printf 'require k8s.io/kubernetes %s\n\nreplace (\n' "$K8S_VERSION"
        sed -n '/^replace (/,/^)/p' "$gomod" \
            | awk -v v="$staging_version" '$2 == "=>" && $3 ~ /^\.\/staging\// { printf "\t%s => %s %s\n", $1, $1, v }'
        printf ')\n'
    } > "${dir}/go.mod.new"
    grep -q 'k8s.io/client-go => k8s.io/client-go' "${dir}/go.mod.new" \
        || die "found no ./staging replace directives in ${gomod}; the layout of k8s.io/kubernetes changed"
    mv "${dir}/go.mod.new" "${dir}/go.mod"
    # A package has to exist in the main module for `go build` to accept it as the build context.
    printf '// Package k8s only anchors the wrapper module that builds k8s.io/kubernetes commands.\npackage k8s\n' \
        > "${dir}/doc.go"
}

write_etcd_wrapper() {
    local dir="$1"
    mkdir -p "$dir"
    printf 'module o1pool.local/kube-testground/etcd\n\ngo 1.26.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
        "$ETCD_VERSION" > "${dir}/go.mod"
    cat > "${dir}/main.go" <<'EOF'
// Command etcd is etcd's own main, built from the go.etcd.io/etcd/server/v3 module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
}

build() {
    if all_built; then
        log "already built: ${BIN_DIR}"
        return 0
    fi
    local go
    go="$(find_go)"
    mkdir -p "$BIN_DIR" "$SRC_DIR"
    # GOTOOLCHAIN=local: never fetch another toolchain behind our back. GOFLAGS=-mod=mod: let the
    # wrapper modules record go.sum entries as they resolve (they are generated, not committed).
    export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
    local started=$SECONDS

    if [[ ! -x "${BIN_DIR}/etcd" ]]; then
        log "building etcd ${ETCD_VERSION}"
        write_etcd_wrapper "${SRC_DIR}/etcd"
        (cd "${SRC_DIR}/etcd" && "$go" build -trimpath -ldflags="-s -w" -o "${BIN_DIR}/etcd.tmp" .)
        mv "${BIN_DIR}/etcd.tmp" "${BIN_DIR}/etcd"
    fi

    if [[ ! -x "${BIN_DIR}/helm" ]]; then
        log "building helm ${HELM_VERSION}"
        local gobin="${SRC_DIR}/helm-bin"
        mkdir -p "$gobin"
        GOBIN="$gobin" GOFLAGS='' "$go" install -trimpath \
            -ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" \
            "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
        mv "${gobin}/helm" "${BIN_DIR}/helm"
    fi

    if [[ ! -x "${BIN_DIR}/coredns" ]]; then
        log "building coredns ${COREDNS_VERSION}"
        local gobin="${SRC_DIR}/coredns-bin"
        mkdir -p "$gobin"
        GOBIN="$gobin" GOFLAGS='' "$go" install -trimpath -ldflags="-s -w" \
            "github.com/coredns/coredns@${COREDNS_VERSION}"
        mv "${gobin}/coredns" "${BIN_DIR}/coredns"
    fi

    if [[ ! -x "${BIN_DIR}/pause" ]]; then
        log "building pause"
        (cd "${REPO_ROOT}/hack/node/pause" && GOFLAGS='' "$go" build -trimpath -ldflags="-s -w" \
            -o "${BIN_DIR}/pause.tmp" .)
        mv "${BIN_DIR}/pause.tmp" "${BIN_DIR}/pause"
    fi

    local k8s_cmds=() b
    for b in "${K8S_COMMANDS[@]}"; do
        [[ -x "${BIN_DIR}/${b}" ]] || k8s_cmds+=("k8s.io/kubernetes/cmd/${b}")
    done
    if ((${#k8s_cmds[@]})); then
        log "building ${k8s_cmds[*]} at ${K8S_VERSION} (slow: tens of minutes on 2 cores)"
        write_k8s_wrapper "$go" "${SRC_DIR}/k8s"
        local out="${SRC_DIR}/k8s-out"
        rm -rf "$out" && mkdir -p "$out"
        (cd "${SRC_DIR}/k8s" && "$go" build -trimpath -ldflags="$(k8s_ldflags)" -o "${out}/" "${k8s_cmds[@]}")
        for b in "$out"/*; do mv "$b" "${BIN_DIR}/"; done
    fi

    all_built || die "build finished but ${BIN_DIR} lacks some of: ${BINARIES[*]}"
    log "built in $((SECONDS - started))s: ${BIN_DIR}"
    "${BIN_DIR}/kubectl" version --client >&2 || true
}

case "${1:-}" in
    build) build ;;
    path)
        all_built || die "not built yet; run: bash hack/kube-testground.sh build"
        printf '%s\n' "$BIN_DIR" ;;
    check) all_built ;;
    versions)
        printf 'kubernetes %s\netcd %s\nhelm %s\ncoredns %s\nbin %s\n' "$K8S_VERSION" "$ETCD_VERSION" "$HELM_VERSION" \
        "$COREDNS_VERSION" "$BIN_DIR" ;;
    up)
        all_built || die "not built yet; run: bash hack/kube-testground.sh build"
        cd "$REPO_ROOT"
        O1POOL_KUBE_BIN="$BIN_DIR" exec "${PYTHON:-python3}" -m tests.kube.testground ;;
    *)
        die "usage: $0 {build|path|check|versions|up}" ;;
esac
