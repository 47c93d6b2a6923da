# longwatch — `make help` lists the targets. Every target sets up what it needs first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
TRITON_VERSION ?= 3.7.1
MAMBA_SSM_VERSION ?= 2.3.2.post1

EXP ?= ma2mba/tiny
# Three synthetic worlds: the default one (STRIDE's); one with 12-24 segments per video for SALOVA, whose
# retrieval means little when a random ranking of 3-8 segments already finds the right one; and the default
# world asking two more question types for Video-Ma²mba, which need no binding of an object to its scene
# (lightning_modules/ma2mba/README.md, "Tiny default").
WORLD_ARGS_data/synthetic := --videos 400 --seed 0 --feats
WORLD_ARGS_data/synthetic-scenes := --videos 300 --eval-videos 50 --seed 0 --feats --scenes 12 24 --minutes 3 6
WORLD_ARGS_data/synthetic-ma2mba := --videos 400 --seed 0 --feats --qa-templates colour_on_background \
  count_on_background appears_after_leaves motion_of_object background_of_object scenes_with_object \
  background_in_video background_at_end
DATA ?= $(if $(filter salova/%,$(EXP)),data/synthetic-scenes,$(if $(filter ma2mba/tiny%,$(EXP)),data/synthetic-ma2mba,data/synthetic))
OUT ?= runs/$(EXP)
CKPT ?=
ARGS ?=
RUNS ?= runs
NODES ?= 1
GPUS_PER_NODE ?= 8
PARTITION ?=
TIME ?= 04:00:00

.PHONY: help install test test-slow test-gpu test-slurm data train eval report leaderboard bench bench-compile bench-traffic bench-predict bench-data bench-gpu bench-memory slurm clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-14s\033[0m %s\n", $$1, $$2}'
	@echo "  variables: EXP=$(EXP) OUT=$(OUT) DATA=$(DATA) CKPT= ARGS='key=value ...'"

install: $(VENV)/.installed ## make .venv and install longwatch editable with its dev extra

# A torch the interpreter already has (a CUDA build on a GPU box) is reused with its own triton;
# otherwise the CPU wheel is pinned, so no install ever pulls a multi-GB CUDA build onto a CPU machine.
$(VENV)/.installed: setup.cfg pyproject.toml
	@if python3 -c "import torch" 2>/dev/null; then \
	  echo "reusing the interpreter's torch $$(python3 -c 'import torch; print(torch.__version__)')"; \
	  python3 -m venv --system-site-packages $(VENV); \
	else \
	  python3 -m venv $(VENV) && $(PIP) install -q --upgrade pip && \
	  $(PIP) install -q torch==$(TORCH_VERSION) triton==$(TRITON_VERSION) numpy; \
	fi
	$(PIP) install -q -e '.[dev]'
	@# mamba_ssm as a test oracle only: pure Python, no CUDA build (its kernels are never run on a CPU).
	@if $(PY) -c "import torch,sys; sys.exit(torch.cuda.is_available())"; then \
	  MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE $(PIP) install -q --no-build-isolation --no-deps mamba-ssm==$(MAMBA_SSM_VERSION); fi
	@touch $@

test: install ## run the CPU test suite (what CI runs)
	$(PY) -m pytest -q

test-slow: install ## run the slow CPU tier
	$(PY) -m pytest -q -m slow

test-gpu: install ## run the GPU tier (needs CUDA)
	$(PY) -m pytest -q -m gpu

test-slurm: install ## start a local Slurm cluster and run the multi-node tests
	$(PY) -m pytest -q -m slurm

data: $(DATA)/world.json ## generate the synthetic long-video world EXP reads (into DATA)

%/world.json: | install
	$(PY) -m datamodules.synthetic --out $* $(or $(WORLD_ARGS_$*),$(WORLD_ARGS_data/synthetic))

# DATA=dir on the command line also points the experiment at it (data.root)
train: data ## fit EXP (default ma2mba/tiny) on its synthetic world, test it and write OUT/report
	$(PY) -m experiments.run fit --exp $(EXP) --out $(OUT) $(if $(filter command line,$(origin DATA)),data.root=$(DATA)) $(ARGS)

eval: install ## test EXP from CKPT (default OUT/checkpoints/last.ckpt) and write the report
	$(PY) -m experiments.run test --exp $(EXP) --out $(OUT) $(if $(CKPT),--ckpt $(CKPT)) $(ARGS)

report: install ## rebuild OUT/report from a finished run
	$(PY) -m experiments.run report --out $(OUT)

leaderboard: install ## tabulate every report under RUNS (default runs/)
	$(PY) -m experiments.report --leaderboard $(RUNS)

bench: install ## CPU kernel benchmarks (SSD scan vs peers), results kept under kernels/benchmarks/results
	$(PY) -m kernels.benchmarks.ssd --suite cpu --threads 1

bench-compile: install ## compile ours and mamba_ssm's Triton kernels for sm_90 (no GPU): registers, spills, resident programs, waits
	env -u TRITON_INTERPRET $(PY) -m kernels.benchmarks.gpu_compile
	env -u TRITON_INTERPRET $(PY) -m kernels.benchmarks.gpu_compile --peer

bench-traffic: install ## bytes our Triton SSD scan moves vs mamba_ssm's, counted in the Triton interpreter (no GPU)
	TRITON_INTERPRET=1 $(PY) -m kernels.benchmarks.traffic

bench-predict: install ## the traffic counts scaled to the GPU suite's shapes, read against the kept H100 table (no GPU)
	TRITON_INTERPRET=1 $(PY) -m kernels.benchmarks.predict

bench-data: install ## synthetic-world generation speed and loader throughput
	$(PY) -m datamodules.benchmarks

bench-gpu: install ## GPU tests and kernel benchmarks in one script (writes results under $OUT)
	bash kernels/benchmarks/gpu_check.sh

bench-memory: install ## MA-GC training-step memory sweep (none/layer/sqrt/ma_gc, S = 2^10..2^18)
	$(PY) -m experiments.bench_memory --sweep

slurm: install ## submit EXP to Slurm: NODES=N GPUS_PER_NODE=G (0: CPU/gloo) [PARTITION=p] [TIME=hh:mm:ss] [DRY_RUN=1] [WAIT=1]
	$(PY) -m experiments.slurm.submit --exp $(EXP) --out $(OUT) --nodes $(NODES) --gpus-per-node $(GPUS_PER_NODE) \
	  --time $(TIME) $(if $(PARTITION),--partition $(PARTITION)) $(if $(DRY_RUN),--dry-run) $(if $(WAIT),--wait) $(ARGS)

clean: ## remove the virtualenv and build leftovers (keeps data/ and runs/)
	rm -rf $(VENV) build *.egg-info .pytest_cache
