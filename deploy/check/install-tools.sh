#!/usr/bin/env bash
# Installs the tools `make deploy-check` uses, each cached by version outside the repository, so a
# second run (or a fresh clone on the same machine) finds them in seconds. Idempotent.
#
# usage: deploy/check/install-tools.sh [env]
#   (no argument)  install what is missing, then print nothing but progress on stderr
#   env            also print KEY=VALUE lines (HELM=..., KUBECONFORM=..., ...) for the caller to eval
#
# Where: $DKNN_DEPLOY_TOOLS (default ~/.cache/dknn-agent/deploy-tools). Go's own module and build
# caches (GOMODCACHE, GOCACHE) make a rebuild after a cleared tools dir take seconds, not minutes.
#
#   helm            go install helm.sh/helm/v3/cmd/helm            (~10 min cold on 2 cores)
#   kubeconform     go install github.com/yannh/kubeconform/...     (~20 s)
#   kube-apiserver  built from k8s.io/kubernetes through a wrapper go.mod (~16 min cold, 20 s warm)
#   kubectl         the machine's, else built from the same module
#   docker-compose  Compose v2 built from github.com/docker/compose/v2 (a wrapper go.mod: its own go.mod
#                   has `exclude` lines, which `go install` refuses), for `docker-compose config`
#   etcd            the machine's, else Debian's etcd-server unpacked (not installed; no root) by
#                   deploy/tools/debian-package.sh into etcd-server-<os>-<arch>
#   schemas         Kubernetes JSON schemas from PyPI's kubernetes-validate, rewritten for kubeconform;
#                   KEDA and prometheus-operator CRDs from their Go modules, converted to JSON schemas
set -euo pipefail

HELM_VERSION=v3.22.0
KUBECONFORM_VERSION=v0.8.0
KUBE_VERSION=1.33.13           # kube-apiserver (and kubectl when built here)
KUBE_SCHEMA_PACKAGE=1.33.1     # kubernetes-validate release that ships the 1.33 schemas
KUBE_SCHEMA_VERSION=1.33.0
PROM_OPERATOR_VERSION=v0.85.0
KEDA_VERSION=v2.21.0
COMPOSE_VERSION=v2.40.3

TOOLS=${DKNN_DEPLOY_TOOLS:-$HOME/.cache/dknn-agent/deploy-tools}
mkdir -p "$TOOLS"
say() { echo "install-tools: $*" >&2; }
need_go() { command -v go >/dev/null || { say "Go is needed (https://go.dev/dl or apt-get install golang)"; exit 1; }; }

# helm and kubeconform: `go install` into a versioned folder.
go_tool() { # name version package
  local dir="$TOOLS/$1-$2"
  if [ ! -x "$dir/$1" ]; then
    need_go
    say "building $1 $2 (minutes the first time)"
    GOBIN="$dir.tmp" go install "$3@$2"
    mv "$dir.tmp" "$dir"
  fi
}
go_tool helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm
go_tool kubeconform "$KUBECONFORM_VERSION" github.com/yannh/kubeconform/cmd/kubeconform

# kube-apiserver: k8s.io/kubernetes points its staging modules at local folders, which `go install`
# refuses; a wrapper module that requires it and replaces each staging module by its published
# v0.X.Y release builds it.
K8S_DIR="$TOOLS/kubernetes-v$KUBE_VERSION"
build_k8s() { # binary
  [ -x "$K8S_DIR/$1" ] && return 0
  need_go
  local wrap="$TOOLS/kubernetes-wrapper-v$KUBE_VERSION"
  mkdir -p "$wrap" "$K8S_DIR"
  if [ ! -f "$wrap/go.sum" ]; then
    local gomod
    gomod=$(go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    {
      echo "module dknn.local/kubewrapper"
      echo "go 1.24"
      echo "require k8s.io/kubernetes v$KUBE_VERSION"
      sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => \./staging/.*#replace \1 => \1 v0.'"${KUBE_VERSION#1.}"'#p' "$gomod"
    } >"$wrap/go.mod"
    printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "k8s.io/kubernetes/cmd/kube-apiserver"\n\t_ "k8s.io/kubernetes/cmd/kubectl"\n)\n' >"$wrap/tools.go"
    (cd "$wrap" && go mod tidy)
  fi
  say "building $1 $KUBE_VERSION (about 16 min the first time, seconds from Go's build cache)"
  local minor=${KUBE_VERSION#1.}
  local ldflags="-X k8s.io/component-base/version.gitVersion=v$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1"
  ldflags="$ldflags -X k8s.io/component-base/version.gitMinor=${minor%%.*}"
  (cd "$wrap" && go build -ldflags "$ldflags" -o "$K8S_DIR/$1.tmp" "k8s.io/kubernetes/cmd/$1" &&
    mv "$K8S_DIR/$1.tmp" "$K8S_DIR/$1")
}
build_k8s kube-apiserver
KUBECTL=$(command -v kubectl || true)
if [ -z "$KUBECTL" ]; then build_k8s kubectl; KUBECTL="$K8S_DIR/kubectl"; fi

COMPOSE_DIR="$TOOLS/compose-$COMPOSE_VERSION"
if [ ! -x "$COMPOSE_DIR/docker-compose" ]; then
  need_go
  wrap="$TOOLS/compose-wrapper-$COMPOSE_VERSION"
  mkdir -p "$wrap" "$COMPOSE_DIR"
  if [ ! -f "$wrap/go.sum" ]; then
    gomod=$(go mod download -json "github.com/docker/compose/v2@$COMPOSE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    {
      echo "module dknn.local/composewrapper"
      sed -n 's/^go \(.*\)/go \1/p' "$gomod"
      echo "require github.com/docker/compose/v2 $COMPOSE_VERSION"
      sed -n '/^exclude (/,/^)/p' "$gomod"
    } >"$wrap/go.mod"
    printf '//go:build tools\n\npackage tools\n\nimport _ "github.com/docker/compose/v2/cmd"\n' >"$wrap/tools.go"
    (cd "$wrap" && go mod tidy)
  fi
  say "building docker-compose $COMPOSE_VERSION (minutes the first time)"
  (cd "$wrap" && go build -o "$COMPOSE_DIR/docker-compose.tmp" github.com/docker/compose/v2/cmd &&
    mv "$COMPOSE_DIR/docker-compose.tmp" "$COMPOSE_DIR/docker-compose")
fi

ETCD=$(command -v etcd || true)
if [ -z "$ETCD" ]; then
  debian_package="$(dirname "$0")/../tools/debian-package.sh"
  tag=$(bash "$debian_package" tag) || { say "etcd is not on PATH: install etcd 3.4+ by hand"; exit 1; }
  ETCD_DIR="$TOOLS/etcd-server-$tag"
  bash "$debian_package" "$ETCD_DIR" etcd-server
  ETCD="$ETCD_DIR/usr/bin/etcd"
  "$ETCD" --version >/dev/null || { say "$ETCD does not run (delete $ETCD_DIR and run again)"; exit 1; }
fi

# JSON schemas for kubeconform, built once per version set.
SCHEMAS="$TOOLS/schemas-k$KUBE_SCHEMA_PACKAGE-po$PROM_OPERATOR_VERSION-keda$KEDA_VERSION"
if [ ! -f "$SCHEMAS/.done" ]; then
  say "building JSON schemas in $SCHEMAS"
  rm -rf "$SCHEMAS" && mkdir -p "$SCHEMAS/crd"
  py="$TOOLS/py"
  [ -x "$py/bin/python" ] || python3 -m venv "$py"
  "$py/bin/python" -m pip install -q "kubernetes-validate==$KUBE_SCHEMA_PACKAGE" PyYAML
  need_go
  po=$(go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROM_OPERATOR_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  keda=$(go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  kc=$(go mod download -json "github.com/yannh/kubeconform@$KUBECONFORM_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  mkdir -p "$SCHEMAS/crd-yaml"
  cp "$po/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" \
     "$po/example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml" \
     "$keda/config/crd/bases/keda.sh_scaledobjects.yaml" \
     "$keda/config/crd/bases/keda.sh_triggerauthentications.yaml" "$SCHEMAS/crd-yaml/"
  chmod -R u+w "$SCHEMAS/crd-yaml"
  "$py/bin/python" "$(dirname "$0")/kube_schemas.py" "$KUBE_SCHEMA_VERSION" "$SCHEMAS"
  (cd "$SCHEMAS/crd" && FILENAME_FORMAT='{kind}_{version}' DENY_ROOT_ADDITIONAL_PROPERTIES=1 "$py/bin/python" "$kc/scripts/openapi2jsonschema.py" ../crd-yaml/*.yaml >/dev/null)
  touch "$SCHEMAS/.done"
fi

if [ "${1:-}" = env ]; then
  echo "HELM=$TOOLS/helm-$HELM_VERSION/helm"
  echo "KUBECONFORM=$TOOLS/kubeconform-$KUBECONFORM_VERSION/kubeconform"
  echo "KUBE_APISERVER=$K8S_DIR/kube-apiserver"
  echo "KUBECTL=$KUBECTL"
  echo "ETCD=$ETCD"
  echo "KUBE_SCHEMAS=$SCHEMAS"
  echo "KUBE_SCHEMA_VERSION=$KUBE_SCHEMA_VERSION"
  echo "CRD_YAML=$SCHEMAS/crd-yaml"
  echo "DOCKER_COMPOSE=$COMPOSE_DIR/docker-compose"
fi
