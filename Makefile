# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BUNDLE ?= artifacts/mnist-cnn
GRAFANA := dashboards/grafana
# Tools fetched without root into ~/.cache/dknn-agent (`make tools`) come first on PATH for every
# recipe and what it runs (tests, demo).
export PATH := $(or $(DKNN_TOOLS_CACHE),$(HOME)/.cache/dknn-agent)/bin:$(PATH)

.PHONY: setup tools test lint test-unit test-e2e observability-check dashboards demo demo-table bench-quality bench-snnl bench-adopted \
	bench-stream bench-perf bench-perf-bf16 bench-scale bench-shift bench-shift-peer bench-extend bench-console examples clean
.PHONY: deploy-check chart-check image-check

setup: $(STAMP)

# Re-installs when the dependency list or the compiled module changes; the editable install picks
# up Python edits by itself.
$(STAMP): pyproject.toml lab/pyproject.toml setup.py agent/engine/_annoy_batch.cpp
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,lab]' -e ./lab
	touch $(STAMP)

# promtool, amtool, prometheus and prometheus-alertmanager into ~/.cache/dknn-agent/bin, no root
# needed (deploy/observability/install.sh says how) unless all four are on PATH; instant once there.
tools:
	bash deploy/observability/install.sh

# Everything CI runs: the static checks first (seconds), then the fast unit suite, then the
# slow groups — end-to-end commands as a user types them, and the real Kafka broker.
test: lint test-unit observability-check test-e2e

# Undefined names, dead imports, formatting, types, and the layering of docs/design.md §7.
lint: setup
	$(BIN)/ruff check agent connectors dknn_events dknn_lab lab producer examples tests deploy $(GRAFANA)
	$(BIN)/ruff format --check agent connectors dknn_events dknn_lab lab producer examples tests deploy $(GRAFANA)
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python $(GRAFANA)/generate.py --check
	$(BIN)/python -m agent.runtime.wire.schemas --check

# Prometheus rules (promtool check + unit tests in which every alert fires and clears), the
# Alertmanager config (amtool), the runbook's anchors, and the dashboards against Grafana's own
# schema and a real Prometheus.
observability-check: setup tools
	bash $(GRAFANA)/validate.sh
	$(BIN)/python -m pytest -q tests/observability

# Regenerate the committed dashboard JSON after editing dashboards/grafana/generate.py.
dashboards: setup
	$(BIN)/python $(GRAFANA)/generate.py

test-unit: setup
	$(BIN)/python -m pytest -q tests/unit

# README commands as subprocesses (train-reference on a small budget, make demo, ...) and the
# agent against a real Kafka 4 broker started by deploy/local/kafka.sh.
test-e2e: setup tools
	$(BIN)/python -m pytest -q tests/e2e tests/integration

# Kubernetes deployment (deploy/helm, deploy/docker; .ci/run runs it after `make test`): the chart
# and the image, each proven with the real tool. Tools: deploy/check/install-tools.sh, cached by
# version in ~/.cache/dknn-agent/deploy-tools (the first run builds helm and kube-apiserver).
deploy-check: chart-check image-check

# helm lint --strict and helm template (default and production values, typos refused by the
# schema), kubeconform -strict with the Kubernetes, KEDA and prometheus-operator schemas, and a
# real kube-apiserver's server-side dry run; broken manifests must be rejected.
chart-check: setup
	bash deploy/check/install-tools.sh
	$(BIN)/python -m pytest -q tests/deploy --ignore tests/deploy/test_image.py

# Build the image (deploy/docker/build.sh) on a private Docker daemon and run it as the chart does
# against a real Kafka broker: ready, scores a stream, /metrics, SIGTERM -> exit 0. Prints size,
# build time and RSS.
image-check: setup
	bash deploy/check/install-tools.sh
	export "$$(bash deploy/docker/dockerd.sh start)"; \
	  $(BIN)/python -m pytest -q -s tests/deploy/test_image.py; status=$$?; \
	  bash deploy/docker/dockerd.sh stop; exit $$status

$(BUNDLE)/manifest.json: | setup
	$(BIN)/dknn-agent train-reference mnist --out $(BUNDLE)

# The streaming demo: local Kafka broker, the agent (metrics on :9108) and a demo producer.
demo: setup tools $(BUNDLE)/manifest.json
	bash deploy/local/demo.sh $(BUNDLE)

# Offline: accuracy and credibility on clean and shifted MNIST, one table.
demo-table: setup $(BUNDLE)/manifest.json
	$(BIN)/dknn-agent demo --artifacts $(BUNDLE)

# Accuracy, credibility, AUROC / FPR@95%TPR against baselines, validity, Annoy recall, plots.
bench-quality: setup $(BUNDLE)/manifest.json
	$(BIN)/dknn-agent bench quality --artifacts $(BUNDLE) --out docs/results --extended

# Does entangling help? Reference models with and without SNNL, three seeds (trains six bundles).
bench-snnl: setup
	$(BIN)/dknn-agent bench snnl --seeds 0,1,2 --out docs/results

# The adopted reference configuration against the previous reference (plain model, the paper's
# DkNN), three seeds, 3,000 evaluation points each, natural sets included: about 25 minutes when
# the six models are cached in artifacts/snnl-study (a changed fit refits them), longer when they train.
bench-adopted: setup
	$(BIN)/dknn-agent bench snnl --adopted --seeds 0,1,2 --limit 3000 --out docs/results

# Drift signals: false-alarm run lengths, detection delay and resolution (about 15 minutes on 2 cores).
bench-shift: setup $(BUNDLE)/manifest.json
	$(BIN)/dknn-agent bench shift --artifacts $(BUNDLE) --out docs/results

# The drift detector beside alibi-detect's CVMDriftOnline / FETDriftOnline on the same score streams
# (about 20 minutes). alibi-detect pins numpy < 2, so it gets its own environment, .venv-peer, and
# replays the scores `bench shift --save-scores` wrote; the agent's venv never sees it.
PEER_VENV   := .venv-peer
PEER_PIN    := alibi-detect==0.13.0
SHIFT_SCORES := artifacts/shift-scores.npz

$(PEER_VENV)/.installed:
	test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install -q '$(PEER_PIN)'
	touch $@

$(SHIFT_SCORES): $(BUNDLE)/manifest.json | setup
	$(BIN)/dknn-agent bench shift --artifacts $(BUNDLE) --save-scores $@ --scores-only

bench-shift-peer: $(SHIFT_SCORES) $(PEER_VENV)/.installed
	PYTHONPATH=. $(PEER_VENV)/bin/python -m dknn_lab.bench.shift_peer --scores $(SHIFT_SCORES) --out docs/results

# The scoring path against the model's own forward pass in the same run, stage by stage, Annoy
# against exact (speed, accuracy, AUROC, recall@k); about 3 minutes.
bench-perf: setup $(BUNDLE)/manifest.json
	$(BIN)/dknn-agent bench perf --artifacts $(BUNDLE) --out docs/results

# The same model and fit with its forward passes in bfloat16 (torch.autocast): about twice the
# activation rate on CPUs with native bfloat16 (AVX512-BF16, AMX), slower elsewhere; about 4 minutes.
BF16_BUNDLE := artifacts/mnist-cnn-bf16
$(BF16_BUNDLE)/manifest.json: $(BUNDLE)/manifest.json
	$(BIN)/dknn-agent train-reference mnist --refit $(BUNDLE) --compute-dtype bfloat16 --out $(BF16_BUNDLE) --force

bench-perf-bf16: setup $(BF16_BUNDLE)/manifest.json
	$(BIN)/dknn-agent bench perf --artifacts $(BF16_BUNDLE) --out docs/results/perf-bf16

# The scale check: a 1,000,000-point reference (the training images plus rotated, scaled and
# shifted copies; fitting takes about 6 minutes and several GB, the bundle about 450 MB without the 784 MB
# of thumbnails a bench never reads), then bench perf on it with fewer inputs, since exact search over a
# million points scores about 30 inputs/s.
SCALE_BUNDLE := artifacts/mnist-cnn-1m
$(SCALE_BUNDLE)/manifest.json: $(BUNDLE)/manifest.json
	$(BIN)/dknn-agent train-reference mnist --refit $(BUNDLE) --index-size 1000000 --exemplars none \
	  --out $(SCALE_BUNDLE) --force

bench-scale: setup $(SCALE_BUNDLE)/manifest.json
	$(BIN)/dknn-agent bench perf --artifacts $(SCALE_BUNDLE) --count 1024 --exact-count 128 --out docs/results/perf-1m

# Reviews of rotated digits the reference quarantines, `dknn-agent extend`'s code, and both bundles on
# held-out rotated and clean digits (about a minute on 2 cores; the reference bundle is only read).
bench-extend: setup $(BUNDLE)/manifest.json
	$(BIN)/dknn-agent bench extend --artifacts $(BUNDLE) --out docs/results

bench-stream: setup $(BUNDLE)/manifest.json
	bash deploy/local/kafka.sh fetch >/dev/null
	bootstrap=$$(bash deploy/local/kafka.sh start --data-dir /tmp/dknn-bench-kafka | sed -n 's/^BOOTSTRAP=//p'); \
	  $(BIN)/dknn-agent bench stream --artifacts $(BUNDLE) --bootstrap-servers $$bootstrap --out docs/results; \
	  status=$$?; bash deploy/local/kafka.sh stop --data-dir /tmp/dknn-bench-kafka --purge >/dev/null; exit $$status

# The review console over 100,000 quarantined events on a local broker: ingest time, and p50/p95/max of
# the first, a filtered, a deep and an event page over HTTP, 200 requests each (under a minute on 2 cores).
bench-console: setup $(BUNDLE)/manifest.json
	bash deploy/local/kafka.sh fetch >/dev/null
	bootstrap=$$(bash deploy/local/kafka.sh start --data-dir /tmp/dknn-bench-console-kafka | sed -n 's/^BOOTSTRAP=//p'); \
	  $(BIN)/dknn-agent bench console --artifacts $(BUNDLE) --bootstrap-servers $$bootstrap --out docs/results; \
	  status=$$?; bash deploy/local/kafka.sh stop --data-dir /tmp/dknn-bench-console-kafka --purge >/dev/null; exit $$status

# Three model families beyond MNIST, onboarded as README "Use it on your own model" shows: each
# example trains a model with plain torch and exports it (examples/<family>/train.py), `fit` makes
# its bundle with the defaults, `evaluate` writes its report to docs/results/examples/<family>/.
# About 10 minutes on 2 cores (the ResNet trains for 3 of them).
EXAMPLES := artifacts/examples
examples: setup
	$(BIN)/python examples/tabular/train.py --out $(EXAMPLES)/tabular
	$(BIN)/dknn-agent fit --model $(EXAMPLES)/tabular/model.pt2 --train $(EXAMPLES)/tabular/train.npz \
	  --calibration $(EXAMPLES)/tabular/calibration.npz --out $(EXAMPLES)/tabular/bundle --model-name tabular --force --quiet
	$(BIN)/dknn-agent evaluate --artifacts $(EXAMPLES)/tabular/bundle --clean $(EXAMPLES)/tabular/test.npz \
	  --ood noise=$(EXAMPLES)/tabular/ood/noise.npy --ood unseen-digits=$(EXAMPLES)/tabular/ood/unseen-digits.npy \
	  --out docs/results/examples/tabular --quiet
	$(BIN)/python examples/resnet/train.py --out $(EXAMPLES)/resnet
	$(BIN)/dknn-agent fit --model $(EXAMPLES)/resnet/model.pt2 --train $(EXAMPLES)/resnet/train.npz \
	  --calibration $(EXAMPLES)/resnet/calibration.npz --out $(EXAMPLES)/resnet/bundle --model-name resnet --force --quiet
	$(BIN)/dknn-agent evaluate --artifacts $(EXAMPLES)/resnet/bundle --clean $(EXAMPLES)/resnet/test.npz \
	  --ood noise=$(EXAMPLES)/resnet/ood/noise.npy --ood rotated=$(EXAMPLES)/resnet/ood/rotated.npy \
	  --ood photos=$(EXAMPLES)/resnet/ood/photos.npy --out docs/results/examples/resnet --quiet
	$(BIN)/python examples/text/train.py --out $(EXAMPLES)/text
	$(BIN)/dknn-agent fit --model $(EXAMPLES)/text/model.pt2 --output logits --train $(EXAMPLES)/text/train.npz \
	  --calibration $(EXAMPLES)/text/calibration.npz --vocabulary $(EXAMPLES)/text/vocabulary.txt \
	  --out $(EXAMPLES)/text/bundle --model-name text --force --quiet
	$(BIN)/dknn-agent evaluate --artifacts $(EXAMPLES)/text/bundle --clean $(EXAMPLES)/text/test.npz \
	  --ood random-tokens=$(EXAMPLES)/text/ood/random-tokens.npz \
	  --ood unseen-language=$(EXAMPLES)/text/ood/unseen-language.npz --out docs/results/examples/text --quiet

# The README's picture of the review console: the browser test's own screenshot of an event page
# (tests/e2e/test_review_console.py, on the MNIST smoke bundle and a real broker).
screenshots: setup tools
	DKNN_SCREENSHOT_DIR=docs/images $(BIN)/python -m pytest -q tests/e2e/test_review_console.py -k demo_stream

clean:
	rm -rf $(VENV) $(PEER_VENV) artifacts build agent/engine/*.so .pytest_cache .hypothesis .mypy_cache .ruff_cache .import_linter_cache
