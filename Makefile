# Two commands do everything: `make demo` (the pipeline, then the dashboard) and `make test`.
# Override any variable on the command line, for example `make setup TORCH="torch"`.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# How torch is installed. "auto" takes the local CPU build (torch==2.13.0) where this machine
# has it and PyPI's default build (CUDA on Linux) elsewhere. Give a pip requirement to choose,
# e.g. TORCH="torch --index-url https://download.pytorch.org/whl/cu124" on a GPU machine or
# TORCH="torch --index-url https://download.pytorch.org/whl/cpu" on a laptop without one.
TORCH ?= auto
LOCAL_TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

export PATH := $(abspath $(BIN)):$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo pipeline lock test test-slow test-all lint format clean-venv dashboard chromium

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	@if $(BIN)/python -c "import torch" 2>/dev/null; then \
		echo "torch $$($(BIN)/python -c 'import torch; print(torch.__version__)') already installed"; \
	elif [ "$(TORCH)" != "auto" ]; then \
		$(BIN)/python -m pip install $(TORCH); \
	elif $(BIN)/python -m pip install --quiet --no-index --no-deps "$(LOCAL_TORCH)" 2>/dev/null; then \
		echo "installed the local CPU build $(LOCAL_TORCH)"; \
	else \
		echo "no local torch wheel: installing torch from PyPI"; \
		$(BIN)/python -m pip install torch; \
	fi
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

demo: setup
	$(BIN)/dvc repro
	@echo ""
	@echo "Pipeline done. Generated Pokémon, base and LoRA from the same noise:"
	@echo "  outputs/generated/grid.png                       side by side, every prompt and seed"
	@echo "  outputs/generated/{base,lora}/<prompt>/seed-<n>.png"
	@echo "  outputs/base_model/samples.png                   what the base model draws per type"
	@echo "  outputs/report/report.html                       the run's report"
	@echo "Metrics and plots: dvc metrics show, dvc plots show. Experiments: see the README."
	@echo ""
	$(BIN)/python -m dashboard.serve --repo . --host $(HOST) --port $(PORT) $(NO_TOKEN)

pipeline: demo

# After a change that alters an output: run the pipeline and note the machine the committed
# dvc.lock was made on (tests/test_lock_reproduced.py compares a fresh run against both).
lock: setup
	$(BIN)/dvc repro
	$(BIN)/python -m stages.common.determinism > outputs/lock_machine.json

# The dashboard's browser tests drive Debian's Chromium (never a downloaded browser).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium for the dashboard's browser tests"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

# `make test`: everything but the long end-to-end runs marked slow (about 15 minutes on 2
# cores); `make test-slow`: those (the default pipeline from nothing against dvc.lock, the
# pipeline through dvc, twenty queued experiments, interrupted and killed training runs resumed);
# `make test-all`: both. CI runs test, then test-slow.
test: setup chromium
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: setup chromium
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

test-all: setup chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint:
	$(BIN)/ruff check stages dashboard tests bench
	$(BIN)/ruff format --check stages dashboard tests bench

format:
	$(BIN)/ruff format stages dashboard tests bench
	$(BIN)/ruff check --fix stages dashboard tests bench

clean-venv:
	rm -rf $(VENV)

# The dashboard, served by Voila on this machine only, behind a random token that it prints in
# its address (http://127.0.0.1:8866/?token=...). `make dashboard PORT=9000` picks the port;
# `TOKEN=secret make dashboard` sets the token, handed to the server in its environment, never on
# a command line that ps shows (`make dashboard TOKEN=secret` works too, but shows it in make's
# own); TOKEN=none serves without one, on a loopback HOST only; HOST=0.0.0.0 listens beyond
# localhost (keep the token: the dashboard can run code).
HOST ?= 127.0.0.1
PORT ?= 8866
TOKEN ?=
NO_TOKEN = $(if $(filter none,$(TOKEN)),--no-token)
dashboard demo: export DASHBOARD_TOKEN = $(if $(filter none,$(TOKEN)),,$(TOKEN))

dashboard: setup
	$(BIN)/python -m dashboard.serve --repo . --host $(HOST) --port $(PORT) $(NO_TOKEN)
