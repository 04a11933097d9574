# Set-up and test entry points. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test bench clean

install: $(STAMP)

# Without a GPU, install the CPU build of torch first (from local disk here), so the
# `torch>=2.11,<2.14` requirement of the test extra is already met and no CUDA build is pulled.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@if nvidia-smi -L >/dev/null 2>&1; then \
		echo "GPU found: torch comes with the project's requirements"; \
	else \
		echo "no GPU: installing CPU torch==$(TORCH_VERSION) first"; \
		$(PY) -m pip install -q "torch==$(TORCH_VERSION)"; \
	fi
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/tiers.py --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
