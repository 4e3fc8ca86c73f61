#!/usr/bin/env bash
# Copies Cluster API's CRDs (core and the kubeadm control plane) out of the CAPI module that go.mod
# pins, so tests and `make dev` serve the exact API version the code is compiled against.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# `go list -m` prints an empty Dir until the module is in the module cache (a fresh machine), so
# download it first: `go mod download -json` prints the Dir it downloaded to.
DIR=$(go mod download -json sigs.k8s.io/cluster-api | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
[ -n "$DIR" ] || DIR=$(go list -m -f '{{.Dir}}' sigs.k8s.io/cluster-api)
[ -n "$DIR" ] && [ -d "$DIR" ] || { echo "capi-crds: module sigs.k8s.io/cluster-api not found" >&2; exit 1; }
OUT=config/crd/capi
rm -rf "$OUT"
mkdir -p "$OUT"
cp "$DIR"/core/config/crd/bases/*.yaml "$OUT"/
cp "$DIR"/controlplane/kubeadm/config/crd/bases/*.yaml "$OUT"/
chmod 0644 "$OUT"/*.yaml
echo "capi-crds: copied $(ls "$OUT" | wc -l) CRDs from $(go list -m sigs.k8s.io/cluster-api)" >&2
