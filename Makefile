# Every target runs inside .venv at the repository root; `make install` creates it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test demo bench reproduce-table1 reproduce-table2 reproduce-table3 reproduce-table4 clean help

SCALE ?= full

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
	$(PY) -m uplift.demo $(ARGS)

reproduce-table1: install  ## Table 1: every upsampler x every probe -> results/table1.md (SCALE=tiny: pipeline test)
	$(PY) -m uplift.reproduce --scale $(SCALE) $(ARGS)

reproduce-table2: install  ## Table 2: SD1.5 512 -> UPLiFT 1024 on COCO-5k captions -> results/table2.md (SCALE=tiny: pipeline test)
	$(PY) -m uplift.evaluation.text2image --scale $(SCALE) --config configs/t2i_coco.yaml $(ARGS)

reproduce-table3: install  ## Table 3: SD1.5 512 -> UPLiFT 1024 on reLAION-5k prompts -> results/table3.md (SCALE=tiny: pipeline test)
	$(PY) -m uplift.evaluation.text2image --scale $(SCALE) --config configs/t2i_relaion.yaml $(ARGS)

reproduce-table4: install  ## Table 4: 256 -> 1024 super-resolution, FacesHQ + LHQ -> results/table4.md (SCALE=tiny: pipeline test)
	$(PY) -m uplift.evaluation.superres --scale $(SCALE) --config configs/sr_faceshq.yaml --config configs/sr_lhq.yaml $(ARGS)

BASELINE ?=

bench: install  ## Local Attender kernels, then time/memory vs tokens (448 px and a 256..2048 px sweep) -> bench/results/ (BASELINE=<dir with the old uplift package> adds 'before')
	$(PY) bench/local_attender.py $(ARGS)
	$(PY) bench/scaling.py --preset dinov2-s14 --sizes 448 --tile 16 $(if $(BASELINE),--baseline $(BASELINE)) $(ARGS)
	$(PY) bench/scaling.py $(if $(BASELINE),--baseline $(BASELINE)) $(ARGS)

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache build *.egg-info
