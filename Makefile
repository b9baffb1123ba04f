# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BUNDLE ?= artifacts/mnist-cnn

.PHONY: setup test demo bench-quality clean

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

demo: setup $(BUNDLE)/manifest.json
	$(BIN)/dknn-agent demo --artifacts $(BUNDLE)

bench-quality: setup $(BUNDLE)/manifest.json
	$(BIN)/dknn-agent bench quality --artifacts $(BUNDLE) --out docs/results

clean:
	rm -rf $(VENV) artifacts .pytest_cache .hypothesis
