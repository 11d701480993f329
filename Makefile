# Targets for a fresh Debian or Ubuntu machine, run as root: each installs
# what it needs (apt packages, a virtualenv in .venv) before it runs.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
APT_PACKAGES := redis-server python3-venv

.PHONY: all deps venv lint test demo clean

all: test

deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(BIN)/.installed: pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[fast]' -r requirements-dev.txt
	touch $@

venv: deps $(BIN)/.installed

lint: venv
	$(BIN)/ruff check queuectld tests examples
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

demo: venv
	$(BIN)/python examples/demo.py

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
