# Two entry points: `make demo` and `make test` (each sets up what it needs first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: demo test setup sysdeps bench clean

setup: $(VENV)/.installed

# torch/torchvision first, pinned: pip takes these builds from the local wheel cache
# here; a plain `torch` requirement would pull a newer CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[test]"
	touch $@

# Debian packages the tests use: headless Chromium (audit report test), Fashion-MNIST
# (trainer), WordNet (MetaCLIP metadata).
sysdeps:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null \
	   || [ ! -d /usr/share/datasets/fashion-mnist ] || [ ! -d /usr/share/wordnet ]; then \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q \
	    chromium chromium-driver dataset-fashion-mnist wordnet-base wordnet-sense-index; \
	fi

demo: setup
	$(BIN)/curate demo

test: setup sysdeps
	$(BIN)/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf demo-out .pytest_cache
