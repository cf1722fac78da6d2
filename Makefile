# make demo : the embedded default end to end (toy faces -> latents -> LDM -> captioned grid), CPU-friendly
# make test : the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR := outputs/demo
AUTOENCODER := artifacts/toy_vq

.PHONY: install test demo autoencoder clean-demo
install: $(VENV)/.installed

# torch first, pinned to the builds that pip finds on local disk (no multi-GB download).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

test: install
	@$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose"; exit 1; fi; exit $$rc

# Stage 1 only when no autoencoder is present. The repo ships the one these two commands made: 2500
# steps from scratch, then 4000 more from that export at half the lr.
AE_TRAIN := $(PY) train.py --config-name autoencoder num_threads=1
AE_CONTINUE := model.init_from=$(abspath $(AUTOENCODER)) trainer.max_steps=4000 model.optimizer.lr=1e-3
$(AUTOENCODER)/config.json: | install
	$(AE_TRAIN)
	$(AE_TRAIN) $(AE_CONTINUE)

autoencoder: install
	$(AE_TRAIN)
	$(AE_TRAIN) $(AE_CONTINUE)

# A killed demo resumes from its last checkpoint; a finished one only re-samples. DEMO_ARGS: extra
# overrides, e.g. DEMO_ARGS=trainer.max_steps=2000 trains longer (with DEMO_MINUTES=25 to give it the time).
DEMO_ARGS ?=
# The demo's DEMO_MINUTES (whole minutes) start when make does: the install and the data come out of the
# training's time, which ends DEMO_RESERVE_S early to leave the sampling its share (callbacks.time_budget.ends_by;
# the budget's own minutes, 12 for a plain `train.py experiment=demo`, are raised out of its way).
DEMO_MINUTES ?= 15
DEMO_RESERVE_S ?= 60
DEMO_START := $(shell date +%s)
DEMO_ENDS_BY = $(shell echo $$(( $(DEMO_START) + $(DEMO_MINUTES) * 60 - $(DEMO_RESERVE_S) )))
demo: install $(AUTOENCODER)/config.json
	$(PY) train.py experiment=demo callbacks.time_budget.minutes=$(DEMO_MINUTES) \
		callbacks.time_budget.ends_by=$(DEMO_ENDS_BY) $(DEMO_ARGS) \
		$$(test -f $(DEMO_DIR)/checkpoints/last.ckpt && echo ckpt_path=$(DEMO_DIR)/checkpoints/last.ckpt)
	$(PY) sample.py ckpt=$(DEMO_DIR)/checkpoints/last.ckpt prompts_file=conf/demo_prompts.txt \
		num_images_per_prompt=4 out_dir=$(DEMO_DIR)/samples hydra.run.dir=$(DEMO_DIR)/sample_run
	@echo "demo grid: $(DEMO_DIR)/samples/grid.png"

clean-demo:
	rm -rf $(DEMO_DIR)
