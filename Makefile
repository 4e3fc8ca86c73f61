# Paddock: see README.md. Every tool runs from go.mod (go tool ...) or is built by hack/ scripts.
SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

ENVTEST_K8S_VERSION ?= 1.36.3
IMG ?= ghcr.io/paddock-dev/paddock:dev
CONTROLLER_GEN ?= go tool controller-gen
GO_TEST_FLAGS ?=
# Package list for tests; override to narrow (make test PKGS=./controllers/...).
PKGS ?= ./...

.PHONY: all
all: build

##@ General
.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development
.PHONY: generate
generate: ## Generate DeepCopy methods for the API types.
	$(CONTROLLER_GEN) object paths="./api/..."

.PHONY: manifests
manifests: capi-crds ## Generate CRDs and RBAC into config/ and sync them into the Helm chart.
	$(CONTROLLER_GEN) rbac:roleName=paddock-manager crd:allowDangerousTypes=false paths="./api/..." paths="./controllers/..." paths="./internal/..." \
		output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac
	hack/sync-chart.sh

.PHONY: capi-crds
capi-crds: ## Copy Cluster API's CRDs (core + kubeadm control plane) from the module into config/crd/capi.
	hack/capi-crds.sh

.PHONY: verify
verify: generate manifests fmt ## Regenerate everything and fail if the tree changed (stale generated files).
	@if [ -n "$$(git status --porcelain -- api config charts PROJECT go.mod go.sum)" ]; then \
		echo "Generated files are stale: run 'make generate manifests' and commit."; \
		git status --porcelain -- api config charts PROJECT go.mod go.sum; git --no-pager diff --stat; exit 1; fi

.PHONY: fmt
fmt: ## gofmt the tree.
	gofmt -w $$(git ls-files '*.go')

.PHONY: lint
lint: ## gofmt check, go.mod tidy check, go vet.
	@go mod tidy -diff >/dev/null || { echo "go.mod/go.sum are not tidy: run 'go mod tidy' and commit."; go mod tidy -diff; exit 1; }
	@bad=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$bad" ]; then echo "gofmt needed:"; echo "$$bad"; exit 1; fi
	go vet ./...

.PHONY: envtest
envtest: ## Build etcd, kube-apiserver and kubectl from source into bin/k8s/ (idempotent).
	@hack/setup-envtest.sh >/dev/null

.PHONY: test
test: envtest ## Run all tests against real kube-apiservers (builds them first if needed).
	KUBEBUILDER_ASSETS="$$(hack/setup-envtest.sh)" go test $(GO_TEST_FLAGS) $(PKGS)

.PHONY: bench
bench: envtest ## Run the MemberCluster scale benchmark (hack/bench).
	KUBEBUILDER_ASSETS="$$(hack/setup-envtest.sh)" go run ./hack/bench $(BENCH_ARGS)

##@ Build
.PHONY: build
build: ## Build the manager binary into bin/manager.
	CGO_ENABLED=0 go build -trimpath -o bin/manager .

.PHONY: run
run: ## Run the manager against the cluster of the current KUBECONFIG.
	go run . $(RUN_ARGS)

.PHONY: dev
dev: envtest build ## Run Paddock locally: a management control plane, two members, the manager and the samples.
	KUBEBUILDER_ASSETS="$$(hack/setup-envtest.sh)" go run ./hack/dev --manager-binary bin/manager $(DEV_ARGS)

.PHONY: docker-build
docker-build: ## Build the manager image (needs a Docker engine).
	docker build -t $(IMG) .

.PHONY: fuzz
fuzz: ## Fuzz the kubeconfig policy (FUZZTIME=1m).
	go test ./internal/clustercache/ -run '^$$' -fuzz FuzzPolicyLoad -fuzztime $(or $(FUZZTIME),1m)
