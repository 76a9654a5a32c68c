# Two commands on a fresh machine: `make run` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A machine with an NVIDIA driver gets a CUDA build of torch; others the CPU wheel.
# Override for your platform, e.g. TORCH_SPEC=torch PIP_TORCH_ARGS="--index-url https://download.pytorch.org/whl/cpu"
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_SPEC ?= $(if $(HAS_GPU),torch>=2.4,torch==2.13.0)
PIP_TORCH_ARGS ?=
# test files are shared out to this many processes of one thread each (pytest-xdist; 0 = one process)
TEST_WORKERS ?= 2
RUN_ARGS ?= --dataset mnist5k --epochs 150 --z-dim 10 --eval-every 10 --test-k 1000 --out runs/mnist5k --overwrite

.PHONY: install run test test-slow lint bench clean

STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(PIP_TORCH_ARGS)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/ppl-vae train $(RUN_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

test-slow: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m slow

lint: $(STAMP)
	$(BIN)/ruff check ppl_vae models guides tests examples benchmarks
	$(BIN)/ruff format --check ppl_vae models guides tests examples benchmarks

# pythae 0.1.2 is one of the references; the full-MNIST rows read BENCH_DATA if it holds mnist.npz
BENCH_DATA ?= ../shared/data
bench: $(STAMP)
	$(BIN)/python -m pip install -q "pythae==0.1.2"
	$(BIN)/python benchmarks/train_speed.py $(if $(wildcard $(BENCH_DATA)/mnist.npz),--cases vae100,vae20,vae-iwae50,2layer,2layer-iwae50,full100,full20 --data-dir $(BENCH_DATA))
	$(BIN)/python benchmarks/log_px_speed.py

clean:
	rm -rf $(VENV) runs
