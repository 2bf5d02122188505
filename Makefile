# Thin wrappers: each target calls one stage1 entry point. See README.md; `make help` lists them.
VENV      ?= .venv
PY        := $(VENV)/bin/python
STAGE1    := $(PY) -m stage1
PHASE     ?= 1
DATA      ?=
WEIGHTS   ?= none
BACKBONE  ?= vit_small_patch16_dinov3
SET       ?=
# The registry's Linux torch wheel (this pin is CUDA 13 on x86-64, CPU or GPU host alike);
# setup then gives JAX the CUDA plugin of the same major on NVIDIA machines (stage1/setup_env.py).
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.1
# pytest-xdist: 2 workers (the CI machine has 2 cores), one test module per worker at a time so
# module fixtures (trained runs, caches) are built once; PYTEST_ARGS="-n 0" runs serially.
PYTEST_ARGS ?= -n 2 --dist loadscope
GRID      ?= --grid lr=1e-4:1e-2:log8 --grid weight_decay=0,1e-4,1e-2 --grid seed=0,1,2
# train and sweep replace their run folder: rerunning a target is the point (without it a
# non-empty --out is refused). OVERWRITE= restores the refusal.
OVERWRITE ?= --overwrite

# ---- Defaults of train / sweep / report, in one place: they follow the last `make demo` or
# `make features`, which record the cache they wrote (and the settings it needs) in LAST_MK;
# `make train` records its run, so `make report` reports the last run trained.
LAST_MK   ?= data/last.mk
-include $(LAST_MK)
FEATURES_CACHE ?= data/features.h5
# The demo embeds at 128 px with a random-init ViT-S/16 (no weights can be downloaded): with
# random weights the CLS token is constant (LayerScale 1e-5), so the head reads patch_mean; its
# calib split (131 street groups; a group-level certificate uses one image per group) certifies
# FNR <= 0.1 (PAC, delta 0.05; alpha 0.02 would need 149 roadwork groups for the first exit), so
# the demo asks for alpha = 0.1.
DEMO_CACHE ?= data/demo_features.h5
DEMO_SET  ?= --set head.feature=patch_mean --set risk.alpha=0.1
CACHE     ?= $(or $(LAST_CACHE),$(FEATURES_CACHE))
# the recorded settings belong to the recorded cache: another CACHE does not get them
CACHE_SET  = $(if $(filter $(LAST_CACHE),$(CACHE)),$(LAST_SET))
RUN       ?= runs/phase$(PHASE)
# report: RUN (or PHASE) when given, else the last run trained
given      = $(filter command environment,$(firstword $(origin $(1))))
REPORT_RUN = $(if $(call given,RUN)$(call given,PHASE),$(RUN),$(or $(LAST_RUN),$(RUN)))
# features writes CACHE when given, else data/features.h5 (never the demo cache by default)
FEATURES_OUT = $(if $(call given,CACHE),$(CACHE),$(FEATURES_CACHE))
# record CACHE SET RUN: the defaults the next train / sweep / report start from
define record
	@mkdir -p $(dir $(LAST_MK))
	@printf '# written by `make %s`: defaults of make train / sweep / report\nLAST_CACHE := %s\nLAST_SET := %s\nLAST_RUN := %s\n' '$@' '$(strip $(1))' '$(strip $(2))' '$(strip $(3))' > $(LAST_MK)
endef

.PHONY: setup demo demo-domains features train sweep report export predict test lint clean help mutate

help:
	@echo "make help                  this list, with the current value of every variable"
	@echo "make setup                 create $(VENV) (CPU, or JAX's CUDA plugin matching torch on NVIDIA GPUs)"
	@echo "                           VENV=$(VENV) TORCH_PAIR='$(TORCH_PAIR)'"
	@echo "make demo                  synthetic set -> features -> phase-1 run -> report (records the defaults)"
	@echo "                           DEMO_CACHE=$(DEMO_CACHE) DEMO_SET='$(DEMO_SET)' SET=..."
	@echo "make demo-domains          shifted domains (street/night/fog/camera2) + augmented views -> pooled run, FNR per domain"
	@echo "                           DOMAINS=$(DOMAINS) DOMAINS_N=$(DOMAINS_N) DOMAINS_VIEWS=$(DOMAINS_VIEWS)"
	@echo "                           DOMAINS_DATA=$(DOMAINS_DATA) DOMAINS_CACHE=$(DOMAINS_CACHE)"
	@echo "                           then per-domain thresholds, stage1 adapt on DOMAINS_ADAPT=$(DOMAINS_ADAPT), re-extract, per-domain run"
	@echo "                           DOMAINS_ADAPTED=$(DOMAINS_ADAPTED) DOMAINS_SET='$(DOMAINS_SET)' ADAPT_SET='$(ADAPT_SET)'"
	@echo "make features              embed images into a cache (records it as the default CACHE)"
	@echo "                           DATA=folder|manifest|parquet WEIGHTS=$(WEIGHTS) BACKBONE=$(BACKBONE) CACHE=$(FEATURES_OUT)"
	@echo "make train                 train + certify a preset on CACHE into RUN"
	@echo "                           PHASE=$(PHASE) CACHE=$(CACHE) RUN=$(RUN) SET='$(strip $(CACHE_SET) $(SET))' OVERWRITE=$(OVERWRITE)"
	@echo "make sweep                 vmapped hyperparameter sweep on CACHE into runs/sweep"
	@echo "                           PHASE=$(PHASE) CACHE=$(CACHE) GRID='$(GRID)' SET=... OVERWRITE=$(OVERWRITE)"
	@echo "make report                HTML/Markdown report with bootstrap intervals"
	@echo "                           RUN=$(REPORT_RUN) (default: the last run trained)"
	@echo "make export                bundle a run for serving (stage1 export)"
	@echo "                           RUN=$(RUN) BUNDLE=$(BUNDLE)"
	@echo "make predict               answer images with a bundle (stage1 predict)"
	@echo "                           BUNDLE=$(BUNDLE) IMAGES=$(IMAGES) PREDS=$(PREDS)"
	@echo "make test                  pytest -m 'not slow and not gpu'; PYTEST_ARGS='$(PYTEST_ARGS)'"
	@echo "make mutate                mutation testing of calibrate/ and stage1/run/ (docs/testing.md)"
	@echo "                           MUTANTS='$(MUTANTS)' JOBS=2"
	@echo "make lint                  ruff check + ruff format --check"
	@echo "make clean                 remove runs/, $(FEATURES_CACHE), $(LAST_MK) and tool caches"
	@echo "defaults: LAST_MK=$(LAST_MK) (written by make demo / features / train) when present, else"
	@echo "                           CACHE=FEATURES_CACHE=$(FEATURES_CACHE) RUN=runs/phase\$$PHASE"

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PAIR)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m stage1.setup_env
	touch $@

demo: setup
	$(STAGE1) features --out $(DEMO_CACHE) --weights none --backbone $(BACKBONE) --image-size 128
	$(STAGE1) train --cache $(DEMO_CACHE) --phase 1 --out runs/demo $(OVERWRITE) $(DEMO_SET) $(SET)
	$(call record,$(DEMO_CACHE),$(DEMO_SET),runs/demo)
	$(STAGE1) report --run runs/demo
	$(STAGE1) export --run runs/demo --out runs/demo/bundle --overwrite
	$(STAGE1) demo-data --out data/demo_heldout --n 8 --seed 1
	$(STAGE1) predict --bundle runs/demo/bundle data/demo_heldout --out runs/demo/heldout.jsonl

# ---- Domain-shift demo (docs/domains.md): the synthetic set in four domains, K augmented views
# per train image, a phase-1 run with one pooled threshold, the same with one certified threshold
# per domain (risk.per_domain), then `stage1 adapt` on one shifted domain, re-extraction and the
# per-domain run again; the FNR and exit rate per domain of all three runs.
DOMAINS       ?= street,night,fog,camera2
DOMAINS_N     ?= 2000
DOMAINS_VIEWS ?= 1
DOMAINS_DATA  ?= data/demo_domains
DOMAINS_CACHE ?= data/demo_domains_features.h5
# the domain `stage1 adapt` adapts the backbone to (its unlabelled train images), and a short
# CPU-sized adaptation (docs/adapt.md: the defaults are for a GPU and real weights)
DOMAINS_ADAPT ?= fog
DOMAINS_ADAPTED ?= data/demo_domains_adapted.h5
# alpha 0.2: each shifted domain's own calib split (about 30 street groups) can certify it, so
# adaptation shows in that domain's exit rate instead of the domain being deferred entirely
DOMAINS_SET ?= --set head.feature=patch_mean --set risk.alpha=0.2
ADAPT_SET ?= --set adapt.steps=40 --set adapt.batch_size=8 --set adapt.local_crops=2 --set adapt.local_size=64 --set adapt.out_dim=4096 --set adapt.head_hidden=512 --set adapt.export=student --set adapt.lr=3e-3
demo-domains: setup
	$(STAGE1) demo-data --out $(DOMAINS_DATA) --n $(DOMAINS_N) --domains $(DOMAINS)
	$(STAGE1) features --data $(DOMAINS_DATA) --out $(DOMAINS_CACHE) --weights none --backbone $(BACKBONE) --image-size 128 --set augment.views=$(DOMAINS_VIEWS)
	$(STAGE1) train --cache $(DOMAINS_CACHE) --phase 1 --out runs/domains_pooled $(OVERWRITE) $(DOMAINS_SET) $(SET)
	$(STAGE1) report --run runs/domains_pooled
	$(PY) -m stage1.demo.shift runs/domains_pooled --split calib
	$(PY) -m stage1.demo.shift runs/domains_pooled
	$(STAGE1) train --cache $(DOMAINS_CACHE) --phase 1 --out runs/domains_per_domain $(OVERWRITE) $(DOMAINS_SET) --set risk.per_domain=true $(SET)
	$(STAGE1) report --run runs/domains_per_domain
	$(STAGE1) adapt --out runs/domains_adapt --data $(DOMAINS_DATA) --domain $(DOMAINS_ADAPT) --weights none --backbone $(BACKBONE) --image-size 128 --overwrite $(ADAPT_SET)
	rm -f $(DOMAINS_ADAPTED)  # embeds the weights just adapted: never resume one of other weights
	$(STAGE1) features --data $(DOMAINS_DATA) --out $(DOMAINS_ADAPTED) --weights runs/domains_adapt/backbone_merged.safetensors --backbone $(BACKBONE) --image-size 128 --set augment.views=$(DOMAINS_VIEWS)
	$(STAGE1) train --cache $(DOMAINS_ADAPTED) --phase 1 --out runs/domains_adapted $(OVERWRITE) $(DOMAINS_SET) --set risk.per_domain=true $(SET)
	$(STAGE1) report --run runs/domains_adapted
	$(PY) -m stage1.demo.shift runs/domains_pooled runs/domains_per_domain runs/domains_adapted

features: setup
	$(STAGE1) features $(if $(DATA),--data $(DATA)) --out $(FEATURES_OUT) --weights $(WEIGHTS) --backbone $(BACKBONE)
	$(call record,$(FEATURES_OUT),,$(LAST_RUN))

train: setup
	$(STAGE1) train --cache $(CACHE) --phase $(PHASE) --out $(RUN) $(OVERWRITE) $(if $(DATA),--data $(DATA)) $(CACHE_SET) $(SET)
	$(call record,$(CACHE),$(CACHE_SET),$(RUN))

sweep: setup
	$(STAGE1) sweep --cache $(CACHE) --phase $(PHASE) --out runs/sweep $(OVERWRITE) $(GRID) $(CACHE_SET) $(SET)

report: setup
	$(STAGE1) report --run $(REPORT_RUN)

# Serving: BUNDLE from RUN; IMAGES are files, folders or CSV/JSONL manifests.
BUNDLE    ?= $(RUN)/bundle
IMAGES    ?= data/demo_heldout
PREDS     ?= $(RUN)/predict.jsonl

export: setup
	$(STAGE1) export --run $(RUN) --out $(BUNDLE) --overwrite

predict: setup
	$(STAGE1) predict --bundle $(BUNDLE) $(IMAGES) --out $(PREDS)

test: setup
	$(PY) -m pytest -q -m "not slow and not gpu" $(PYTEST_ARGS)

# Mutation testing of calibrate/ and stage1/run/ (configuration: [tool.mutmut] in pyproject.toml;
# score, timings and the surviving mutants in docs/testing.md). Not part of `make test`. The
# default set is what fits 30 min on 2 cores: the numpy/scipy modules of calibrate/ and the run
# driver; MUTANTS='calibrate.* stage1.run.*' runs everything (the jitted JAX modules metrics,
# bootstrap, challenge and the run's provenance too), MUTANTS='calibrate.thresholds*' one module.
MUTANTS   ?= calibrate.thresholds* calibrate.scrc* calibrate.policy.* calibrate.policies* \
             calibrate.groups* calibrate.decision* \
             calibrate.exit_policies* calibrate.calibration* calibrate.calibrators* \
             stage1.run.driver* stage1.run.records* stage1.run.guarantees* stage1.run.data* \
             stage1.run.specs*
mutate: setup
	rm -rf mutants
	# one persistent XLA cache for every mutant's process: unchanged jitted code compiles once
	JAX_COMPILATION_CACHE_DIR=$(CURDIR)/mutants/jax-cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
	  $(PY) -m mutmut run --max-children $(or $(JOBS),2) $(foreach m,$(MUTANTS),'$(m)')
	$(PY) -m mutmut export-cicd-stats
	$(PY) tests/mutmut_score.py $(foreach m,$(MUTANTS),'$(m)')

PY_DIRS := stage1 feature_extract heads calibrate schemas tests bench examples

lint: setup
	$(PY) -m ruff check $(PY_DIRS)
	$(PY) -m ruff format --check $(PY_DIRS)

clean:
	rm -rf runs $(FEATURES_CACHE) $(LAST_MK) .pytest_cache .ruff_cache
