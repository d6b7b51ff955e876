# The two commands: `make run` (start the service on the embedded profile) and `make test`.
# Both share `make setup`, which is skipped when neither pyproject.toml nor this file changed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-stamp
SERVE_CONFIG ?= configs/serve/local.yaml
PORT ?=
PYTEST_ARGS ?=

.PHONY: setup run test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version.split()[0]'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned exactly: where the CPU wheel lies on local disk pip takes it from there.
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

run: setup
	$(BIN)/healthagent serve --serve-config $(SERVE_CONFIG) $(if $(PORT),--port $(PORT))

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) var build *.egg-info
