# Thin wrappers: each target calls one stage1 entry point. See README.md.
VENV      ?= .venv
PY        := $(VENV)/bin/python
STAGE1    := $(PY) -m stage1
PHASE     ?= 1
DATA      ?=
WEIGHTS   ?= none
BACKBONE  ?= vit_small_patch16_dinov3
CACHE     ?= data/features.h5
RUN       ?= runs/phase$(PHASE)
SET       ?=
# CPU pairing that imports cleanly with timm here; override (or pre-install torch) on GPU hosts.
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
GRID      ?= --grid lr=1e-4:1e-2:log8 --grid weight_decay=0,1e-4,1e-2 --grid seed=0,1,2

.PHONY: setup demo features train sweep report test lint clean help mutate

help:
	@echo "make demo | make test | make features [DATA=...] [WEIGHTS=...] | make train PHASE=n | make lint"

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PAIR)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# The demo embeds at 128 px with a random-init ViT-S/16 (no weights can be downloaded): with
# random weights the CLS token is constant (LayerScale 1e-5), so the head reads patch_mean.
DEMO_CACHE ?= data/demo_features.h5

demo: setup
	$(STAGE1) features --out $(DEMO_CACHE) --weights none --backbone $(BACKBONE) --image-size 128
	$(STAGE1) train --cache $(DEMO_CACHE) --phase 1 --out runs/demo --set head.feature=patch_mean $(SET)
	$(STAGE1) report --run runs/demo

features: setup
	$(STAGE1) features $(if $(DATA),--data $(DATA)) --out $(CACHE) --weights $(WEIGHTS) --backbone $(BACKBONE)

train: setup
	$(STAGE1) train --cache $(CACHE) --phase $(PHASE) --out $(RUN) $(SET)

sweep: setup
	$(STAGE1) sweep --cache $(CACHE) --phase $(PHASE) --out runs/sweep $(GRID) $(SET)

report: setup
	$(STAGE1) report --run $(RUN)

test: setup
	$(PY) -m pytest -q -m "not slow and not gpu" $(PYTEST_ARGS)

# Mutation testing of calibrate/ and stage1/run/ (configuration: [tool.mutmut] in pyproject.toml;
# score, timings and the surviving mutants in docs/testing.md). Not part of `make test`. The
# default set leaves out the jitted JAX modules (metrics, bootstrap, challenge: every mutant there
# recompiles) to stay near 30 min on 2 cores; MUTANTS='calibrate.* stage1.run.*' runs everything,
# MUTANTS='calibrate.thresholds*' one module.
MUTANTS   ?= calibrate.thresholds* calibrate.scrc* calibrate.policy.* calibrate.policies* \
             calibrate.exit_policies* calibrate.calibration* calibrate.calibrators* stage1.run.*
mutate: setup
	rm -rf mutants
	# one persistent XLA cache for every mutant's process: unchanged jitted code compiles once
	JAX_COMPILATION_CACHE_DIR=$(CURDIR)/mutants/jax-cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
	  $(PY) -m mutmut run --max-children $(or $(JOBS),2) $(foreach m,$(MUTANTS),'$(m)')
	$(PY) -m mutmut export-cicd-stats
	$(PY) -m mutmut results

PY_DIRS := stage1 feature_extract heads calibrate schemas tests bench

lint: setup
	$(PY) -m ruff check $(PY_DIRS)
	$(PY) -m ruff format --check $(PY_DIRS)

clean:
	rm -rf runs data/features.h5 .pytest_cache .ruff_cache
