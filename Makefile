# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Each does its own set-up: a virtual environment in .venv, the package and its test tools,
# and (where apt is available and we are root) the Fashion-MNIST Debian package.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast setup data

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip || true
	# torch/torchvision: pip picks the newest pair the machine allows (see README, Install)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) data

# Fashion-MNIST from Debian (files under /usr/share/datasets/fashion-mnist); without apt or
# root the demo falls back to scikit-learn's digits and says so.
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
		|| echo "note: could not install dataset-fashion-mnist; the demo will use digits"; \
	fi

demo: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$$(nproc)} $(BIN)/supmim demo --out runs/demo

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"
