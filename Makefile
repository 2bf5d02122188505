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

.PHONY: setup demo features train sweep report test lint clean help

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
# The demo's calib split holds ~130 street groups (~106 with roadwork); a group-level PAC
# certificate at alpha = 0.02 needs 149 roadwork groups (docs/guarantees.md), so the demo
# certifies E[FNR] <= alpha (CRC, 49 groups suffice) instead.
DEMO_CACHE ?= data/demo_features.h5

demo: setup
	$(STAGE1) features --out $(DEMO_CACHE) --weights none --backbone $(BACKBONE) --image-size 128
	$(STAGE1) train --cache $(DEMO_CACHE) --phase 1 --out runs/demo --set head.feature=patch_mean --set risk.method=crc $(SET)
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

PY_DIRS := stage1 feature_extract heads calibrate schemas tests bench

lint: setup
	$(PY) -m ruff check $(PY_DIRS)
	$(PY) -m ruff format --check $(PY_DIRS)

clean:
	rm -rf runs data/features.h5 .pytest_cache .ruff_cache
