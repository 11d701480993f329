# Targets for a fresh Debian or Ubuntu machine, run as root: each installs
# what it needs (apt packages, a virtualenv in .venv) before it runs.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
APT_PACKAGES := redis-server python3-venv

.PHONY: all deps venv lint test test-compat demo clean deb-deps deb systest-deps test-system

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
	$(BIN)/ruff check queuectld tests examples chaos bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

# The suite again with redis-py 4.3.4, the version Debian 12 ships as
# python3-redis, and without hiredis (the chaos run is left out).
COMPAT_VENV := .venv-redis43
$(COMPAT_VENV)/.installed: pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/pip install -q --upgrade pip
	$(COMPAT_VENV)/bin/pip install -q -e . redis==4.3.4 -r requirements-dev.txt
	touch $@

test-compat: deps $(COMPAT_VENV)/.installed
	$(COMPAT_VENV)/bin/pytest -p no:cacheprovider --ignore=tests/test_chaos_quick.py

demo: venv
	$(BIN)/python examples/demo.py

clean:
	rm -rf $(VENV) $(COMPAT_VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache

# The chaos run: queuectl under injected faults (docs/reliability.md).
# `chaos` is the full run of several minutes, `chaos-quick` its short form,
# which `make test` also runs through tests/test_chaos_quick.py.
.PHONY: chaos chaos-quick

chaos: venv
	$(BIN)/python -m chaos

chaos-quick: venv
	$(BIN)/python -m chaos --quick

# --- Debian package and system tests -----------------------------------------

VERSION := $(shell head -n 1 debian/changelog | cut -d ' ' -f 2 | tr -d '()')
DEB := queuectl_$(VERSION)_all.deb
NEXT_VERSION := $(VERSION)+systest1
# The system tests' Debian root, kept between runs; outside the clone.
SYSTEST_CACHE ?= /var/cache/queuectl-systest
SYSTEST_DIR := build/systest

# Build tools, then the Build-Depends of debian/control, from Debian's
# archive; the build itself downloads nothing.
deb-deps:
	@if ! command -v dpkg-checkbuilddeps >/dev/null || ! command -v lintian >/dev/null \
		|| ! command -v git >/dev/null || ! dpkg-checkbuilddeps >/dev/null 2>&1; then \
		echo "installing the packages needed to build queuectl's .deb"; \
		apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			dpkg-dev lintian git \
		&& DEBIAN_FRONTEND=noninteractive apt-get build-dep -y -qq --no-install-recommends ./; \
	fi

# dist/queuectl_<version>_all.deb, checked by lintian: any error or warning fails.
deb: deb-deps
	rm -f dist/queuectl_$(VERSION)_*
	packaging/build-deb dist
	lintian --fail-on error,warning dist/queuectl_$(VERSION)_*.changes

systest-deps:
	@if ! command -v debootstrap >/dev/null || ! command -v systemd-nspawn >/dev/null \
		|| ! command -v nsenter >/dev/null; then \
		echo "installing debootstrap and systemd-nspawn"; \
		apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			debootstrap systemd-container util-linux; \
	fi

# Boots the package in Debian 12 containers; see tests/system/conftest.py.
test-system: deb venv systest-deps
	rm -rf --one-file-system $(SYSTEST_DIR)
	mkdir -p $(SYSTEST_DIR)/debs
	cp dist/$(DEB) $(SYSTEST_DIR)/debs/
	packaging/build-deb $(SYSTEST_DIR)/debs $(NEXT_VERSION)
	tests/system/build-root $(SYSTEST_CACHE) dist/$(DEB) >$(SYSTEST_DIR)/root
	QUEUECTL_SYSTEM_TEST=1 \
	QUEUECTL_SYSTEST_ROOT="$$(cat $(SYSTEST_DIR)/root)" \
	QUEUECTL_SYSTEST_DEBS=$(abspath $(SYSTEST_DIR)/debs) \
	QUEUECTL_SYSTEST_DEB=$(DEB) \
	QUEUECTL_SYSTEST_NEXT_DEB=queuectl_$(NEXT_VERSION)_all.deb \
	QUEUECTL_SYSTEST_WORK=$(abspath $(SYSTEST_DIR)/work) \
	QUEUECTL_SYSTEST_REPORT=$(abspath $(SYSTEST_DIR)/measurements.txt) \
		$(BIN)/pytest -p no:cacheprovider tests/system

# --- benchmark (bench/, docs/benchmarks.md) ---------------------------------
# The peers (RQ, Dramatiq, Celery) live in their own virtualenv, so they
# never become dependencies of queuectl.

PEERS_VENV := bench/.venv-peers
PEERS_BIN := $(PEERS_VENV)/bin

.PHONY: bench bench-quick bench-deps

# The C compiler builds bench/stamp.c; the python3-* packages are the stack
# the .deb runs on, timed next to the virtualenv's.
bench-deps: deps
	@command -v cc >/dev/null || { \
		echo "installing: gcc libc6-dev"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev; \
	}
	@env -u PYTHONPATH /usr/bin/python3 -c 'import redis, sdnotify, daemon' 2>/dev/null || { \
		echo "installing: python3-redis python3-sdnotify python3-daemon"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			python3-redis python3-sdnotify python3-daemon; \
	}

$(PEERS_BIN)/.peers-installed: bench/requirements-peers.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_BIN)/pip install -q -r bench/requirements-peers.txt
	touch $@

$(PEERS_BIN)/.report-installed: $(PEERS_BIN)/.peers-installed bench/requirements-report.txt
	$(PEERS_BIN)/pip install -q -r bench/requirements-report.txt
	touch $@

bench: venv bench-deps $(PEERS_BIN)/.report-installed
	$(BIN)/python -m bench --chart

bench-quick: venv bench-deps $(PEERS_BIN)/.peers-installed
	$(BIN)/python -m bench --quick
