# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BUNDLE ?= artifacts/mnist-cnn

.PHONY: setup test demo demo-table bench-quality bench-snnl bench-stream clean

setup: $(STAMP)

# Re-installs only when the dependency list changes; the editable install picks up code edits.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

$(BUNDLE)/manifest.json: | setup
	$(BIN)/dknn-agent train-reference mnist --out $(BUNDLE)

# The streaming demo: local Kafka broker, the agent (metrics on :9108) and a demo producer.
demo: setup $(BUNDLE)/manifest.json
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

bench-stream: setup $(BUNDLE)/manifest.json
	bash deploy/local/kafka.sh fetch >/dev/null
	bootstrap=$$(bash deploy/local/kafka.sh start --data-dir /tmp/dknn-bench-kafka | sed -n 's/^BOOTSTRAP=//p'); \
	  $(BIN)/dknn-agent bench stream --artifacts $(BUNDLE) --bootstrap-servers $$bootstrap --out docs/results; \
	  status=$$?; bash deploy/local/kafka.sh stop --data-dir /tmp/dknn-bench-kafka --purge >/dev/null; exit $$status

clean:
	rm -rf $(VENV) artifacts .pytest_cache .hypothesis
