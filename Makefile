# veilfed: `make demo` and `make test` each set up .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow test-fast lint bench clean

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	bash experiments/demo.sh

test: $(STAMP)
	$(BIN)/python -m pytest -q --timeout=900 -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q --timeout=900 -m slow

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration and not deployment"

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	for b in experiments/bench/*.py; do $(BIN)/python $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache demo-out
