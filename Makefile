# veilfed: `make demo` and `make test` each set up .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow test-fast test-deploy images lint bench clean

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	bash experiments/demo.sh

test: $(STAMP)
	$(BIN)/python -m pytest -q --timeout=900 -m "not slow and not container"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q --timeout=900 -m slow

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration and not deployment and not container"

# The images, Compose and Kubernetes (podman kube play) end to end; needs root and
# `apt-get install podman runc` (deploy/README.md). CONTAINERS_CONF=... overrides the runtime
# settings this project's sandbox needs (runc, lowered ulimits).
export CONTAINERS_CONF ?= $(CURDIR)/deploy/podman/containers.conf
DEPLOY_STAMP := $(VENV)/.installed-deploy

$(DEPLOY_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,deploy]'
	touch $(DEPLOY_STAMP)

images: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH deploy/build.sh

test-deploy: $(DEPLOY_STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q --timeout=3600 -m container -p no:cacheprovider tests/deployment/test_containers.py

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	for b in experiments/bench/*.py; do $(BIN)/python $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache demo-out
