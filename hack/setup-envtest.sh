#!/usr/bin/env bash
# Builds the control-plane binaries that envtest needs (etcd, kube-apiserver, kubectl) from source,
# and kube-controller-manager, which the tests run beside member apiservers for the controllers a
# member's own behaviour depends on (resource quotas, namespace deletion),
# through the Go module proxy, into a versioned cache folder under bin/. Idempotent: when all three
# binaries are present and report the expected versions it does nothing. Prints the folder for
# KUBEBUILDER_ASSETS on stdout (everything else goes to stderr).
#
# Why from source: setup-envtest downloads prebuilt binaries from sites these machines cannot reach.
#
# Usage: hack/setup-envtest.sh            -> prints e.g. /path/bin/k8s/1.36.3-linux-amd64
# Env:   K8S_VERSION (default 1.36.3), BIN_DIR (default <repo>/bin)
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-1.36.3}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN_DIR=${BIN_DIR:-$ROOT/bin}
GOOS_=$(go env GOOS)
GOARCH_=$(go env GOARCH)
DEST="$BIN_DIR/k8s/${K8S_VERSION}-${GOOS_}-${GOARCH_}"

# Keep a caller's Go settings out of the wrapper builds; static binaries.
export GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0

log() { echo "setup-envtest: $*" >&2; }

# binary_version prints what a binary reports, or nothing. sed (not grep -q) so the binary never
# gets SIGPIPE under pipefail.
apiserver_ok() {
  [ -x "$DEST/kube-apiserver" ] || return 1
  local v
  v=$("$DEST/kube-apiserver" --version 2>/dev/null | sed -n 's/^Kubernetes v\(.*\)$/\1/p') || return 1
  [ "$v" = "$K8S_VERSION" ]
}
kubectl_ok() {
  [ -x "$DEST/kubectl" ] || return 1
  local v
  v=$("$DEST/kubectl" version --client 2>/dev/null | sed -n 's/^Client Version: v\(.*\)$/\1/p') || return 1
  [ "$v" = "$K8S_VERSION" ]
}
kcm_ok() {
  [ -x "$DEST/kube-controller-manager" ] || return 1
  local v
  v=$("$DEST/kube-controller-manager" --version 2>/dev/null | sed -n 's/^Kubernetes v\(.*\)$/\1/p') || return 1
  [ "$v" = "$K8S_VERSION" ]
}
etcd_ok() {
  [ -x "$DEST/etcd" ] || return 1
  [ -f "$DEST/etcd.version" ] || return 1
  local want have
  want=$(cat "$DEST/etcd.version")
  have=$("$DEST/etcd" --version 2>/dev/null | sed -n 's/^etcd Version: \(.*\)$/\1/p') || return 1
  [ "$want" = "$have" ]
}

if apiserver_ok && kubectl_ok && kcm_ok && etcd_ok; then
  echo "$DEST"
  exit 0
fi

mkdir -p "$DEST"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/paddock-envtest.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

log "building Kubernetes v$K8S_VERSION binaries into $DEST (cold: about 6 minutes on 2 cores)"
K8S_DIR=$(cd "$WORK" && go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -n "$K8S_DIR" ] || { log "could not download k8s.io/kubernetes@v$K8S_VERSION"; exit 1; }
STAGING_VERSION="0.${K8S_VERSION#1.}"

# --- Kubernetes wrapper: staging modules replaced by their published versions.
mkdir -p "$WORK/k8s"
{
  echo "module paddock.local/envtest-k8s"
  echo
  sed -n 's/^go \(.*\)$/go \1/p' "$K8S_DIR/go.mod" | head -n1
  sed -n '/^godebug/,/^)/p' "$K8S_DIR/go.mod"
  echo
  echo "require k8s.io/kubernetes v$K8S_VERSION"
  echo
  awk '$2 == "=>" && $3 ~ /^\.\/staging\/src\// { printf "replace %s => %s v'"$STAGING_VERSION"'\n", $1, $1 }' "$K8S_DIR/go.mod"
  # Lines inside a replace ( ... ) block have the same shape as above once "replace" is dropped.
  echo
  echo "tool ("
  echo "	k8s.io/kubernetes/cmd/kube-apiserver"
  echo "	k8s.io/kubernetes/cmd/kubectl"
  echo "	k8s.io/kubernetes/cmd/kube-controller-manager"
  echo ")"
} > "$WORK/k8s/go.mod"
if ! grep -q '^replace k8s.io/api ' "$WORK/k8s/go.mod"; then
  log "found no staging replaces in k8s.io/kubernetes go.mod; recipe out of date"
  exit 1
fi
(cd "$WORK/k8s" && go mod tidy >&2)

LDF="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  LDF="$LDF -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=${K8S_VERSION%%.*}"
  minor=${K8S_VERSION#*.}; minor=${minor%%.*}
  LDF="$LDF -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done
if ! apiserver_ok; then
  log "building kube-apiserver"
  (cd "$WORK/k8s" && go build -trimpath -ldflags "$LDF" -o "$DEST/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver)
  mv "$DEST/kube-apiserver.tmp" "$DEST/kube-apiserver"
fi
if ! kubectl_ok; then
  log "building kubectl"
  (cd "$WORK/k8s" && go build -trimpath -ldflags "$LDF" -o "$DEST/kubectl.tmp" k8s.io/kubernetes/cmd/kubectl)
  mv "$DEST/kubectl.tmp" "$DEST/kubectl"
fi
if ! kcm_ok; then
  log "building kube-controller-manager"
  (cd "$WORK/k8s" && go build -trimpath -ldflags "$LDF" -o "$DEST/kube-controller-manager.tmp" k8s.io/kubernetes/cmd/kube-controller-manager)
  mv "$DEST/kube-controller-manager.tmp" "$DEST/kube-controller-manager"
fi

# --- etcd wrapper: the version Kubernetes itself pins.
ETCD_VERSION=$(awk '$1 == "go.etcd.io/etcd/server/v3" { print $2; exit }' "$K8S_DIR/go.mod")
[ -n "$ETCD_VERSION" ] || { log "could not read the etcd version from k8s.io/kubernetes go.mod"; exit 1; }
echo "${ETCD_VERSION#v}" > "$DEST/etcd.version"
if ! etcd_ok; then
  log "building etcd $ETCD_VERSION"
  mkdir -p "$WORK/etcd"
  cat > "$WORK/etcd/go.mod" <<MOD
module paddock.local/envtest-etcd

go 1.24

require go.etcd.io/etcd/server/v3 $ETCD_VERSION

tool go.etcd.io/etcd/server/v3
MOD
  (cd "$WORK/etcd" && go mod tidy >&2 && go build -trimpath -ldflags "-s -w" -o "$DEST/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$DEST/etcd.tmp" "$DEST/etcd"
fi

apiserver_ok || { log "kube-apiserver does not report v$K8S_VERSION"; exit 1; }
kubectl_ok || { log "kubectl does not report v$K8S_VERSION"; exit 1; }
kcm_ok || { log "kube-controller-manager does not report v$K8S_VERSION"; exit 1; }
etcd_ok || { log "etcd does not report $(cat "$DEST/etcd.version")"; exit 1; }
log "done"
echo "$DEST"
