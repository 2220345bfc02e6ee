# msb — make targets. `make run` and `make test` set everything up on first use (`make setup`:
# scripts/bootstrap.sh installs the packages and builds the agent, kernels and test root filesystems).
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
CACHE ?= $(HOME)/.cache/msb
export MSB_CACHE_DIR ?= $(CACHE)

.PHONY: setup run test test-unit test-vm lint typecheck bench kernel agent netfilter rootfs clean help

help:
	@echo "make run      set up if needed, then start msb-tui"
	@echo "make test     set up if needed, then lint, type-check and run the whole suite (real VMs)"
	@echo "make bench    run the benchmarks; writes bench/results/*.json and docs/benchmarks.md"
	@echo "make setup    install and build everything msb and its tests need (first time ~8 min, then seconds)"
	@echo "make kernel   build the minimal guest kernel from Debian's linux-source (make setup does it; ~5 min once)"
	@echo "make agent    rebuild the guest agent"
	@echo "make netfilter rebuild the host network filter of 'public' sandboxes"

setup:
	@bash scripts/bootstrap.sh

run: setup
	@$(VENV)/bin/msb-tui

lint: setup
	$(VENV)/bin/ruff check engine msb_tui tests bench
	$(VENV)/bin/lint-imports

typecheck: setup
	$(VENV)/bin/mypy

test-unit: setup
	$(PY) -m pytest -q -m "not vm" tests

test-vm: setup
	$(PY) -m pytest -q -m vm tests

test: setup lint typecheck
	$(PY) -m pytest -q -ra --durations=20 tests

bench: setup
	$(PY) -m bench.run

kernel:
	@bash scripts/build-kernel.sh

agent:
	@make -s -C engine/guest/agent OUT="$(CACHE)/agent"

netfilter:
	@make -s -C engine/vm/netfilter OUT="$(CACHE)/netfilter"

rootfs:
	@bash scripts/build-test-rootfs.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
