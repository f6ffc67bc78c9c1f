# Every target runs inside .venv at the repository root; `make install` creates it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test demo bench reproduce-table1 reproduce-table2 reproduce-table3 reproduce-table4 reproduce-table5 reproduce-table6 reproduce-table7 reproduce-table8 clean help

SCALE ?= full

# SCALE and ARGS reach the programs as data, never as shell code: they are exported unexpanded ($(value ...)) and
# WITH_ARGS splits ARGS with Python's shlex (quotes group words as in a shell) and runs the program directly, so
# `make reproduce-table1 ARGS='--rows "uplift; touch /tmp/x"'` passes `--rows` and `uplift; touch /tmp/x`.
export UPLIFT_MAKE_SCALE := $(value SCALE)
export UPLIFT_MAKE_ARGS := $(value ARGS)
WITH_ARGS = $(PY) -c 'import os, shlex, sys; a = sys.argv[1:] + shlex.split(os.environ["UPLIFT_MAKE_ARGS"]); os.execv(a[0], a)'

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 22

install: $(STAMP)  ## create .venv and install the project (editable) with its dev tools

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install  ## run the whole test suite (offline, CPU, ~minutes)
	$(PY) -m pytest

demo: install  ## train for a few minutes on bundled photos, print UPLiFT vs bilinear, write a PCA picture
	$(WITH_ARGS) $(PY) -m tasks.demo

reproduce-table1: install  ## Table 1: every upsampler x every probe -> results/table1.md (SCALE=tiny: pipeline test)
	$(WITH_ARGS) $(PY) -m tasks.tables.table1 --scale "$$UPLIFT_MAKE_SCALE"

reproduce-table2: install  ## Table 2: SD1.5 512 -> UPLiFT 1024 on COCO-5k captions -> results/table2.md (SCALE=tiny: pipeline test)
	$(WITH_ARGS) $(PY) -m tasks.tables.table2 --scale "$$UPLIFT_MAKE_SCALE"

reproduce-table3: install  ## Table 3: SD1.5 512 -> UPLiFT 1024 on reLAION-5k prompts -> results/table3.md (SCALE=tiny: pipeline test)
	$(WITH_ARGS) $(PY) -m tasks.tables.table3 --scale "$$UPLIFT_MAKE_SCALE"

reproduce-table4: install  ## Table 4: 256 -> 1024 super-resolution, FacesHQ + LHQ -> results/table4.md (SCALE=tiny: pipeline test)
	$(WITH_ARGS) $(PY) -m tasks.tables.table4 --scale "$$UPLIFT_MAKE_SCALE"

reproduce-table5: install  ## Table 5: LoftUp on its original vs the timm DINOv2, and UPLiFT -> results/table5.md (SCALE=tiny: pipeline test)
	$(WITH_ARGS) $(PY) -m tasks.tables.table5 --scale "$$UPLIFT_MAKE_SCALE"

reproduce-table6: install  ## Table 6: one UPLiFT per training-depth set, COCO + VOC probes -> results/table6.md (SCALE=tiny: pipeline test)
	$(WITH_ARGS) $(PY) -m tasks.tables.table6 --scale "$$UPLIFT_MAKE_SCALE"

reproduce-table7: install  ## Table 7: one UPLiFT per Local Attender neighbourhood, COCO + VOC probes -> results/table7.md (SCALE=tiny: pipeline test)
	$(WITH_ARGS) $(PY) -m tasks.tables.table7 --scale "$$UPLIFT_MAKE_SCALE"

reproduce-table8: install  ## Table 8: JAFAR, AnyUp, UPLiFT on DINOv2-S/14 vs DINOv3-S+/16 -> results/table8.md (SCALE=tiny: pipeline test)
	$(WITH_ARGS) $(PY) -m tasks.tables.table8 --scale "$$UPLIFT_MAKE_SCALE"

export UPLIFT_MAKE_BASELINE := $(value BASELINE)

bench: install  ## Local Attender kernels, then time/memory vs tokens (448 px, then 256..2048 px) -> bench/results/ (BASELINE=<folder with an older uplift package> adds 'before')
	$(WITH_ARGS) $(PY) bench/local_attender.py
	$(WITH_ARGS) $(PY) bench/scaling.py --preset dinov2-s14 --sizes 448 --tile 16 --baseline "$$UPLIFT_MAKE_BASELINE"
	$(WITH_ARGS) $(PY) bench/scaling.py --baseline "$$UPLIFT_MAKE_BASELINE"

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache build *.egg-info
