# SAM-DETR for Detectron2. `make env` bootstraps the virtual environment in $(VENV) (idempotent:
# a complete one is only summarised), `make test` runs the whole test suite in it (what CI runs,
# through .ci/run). PYTHON is the interpreter that creates the environment.
PYTHON ?= python3
VENV ?= .venv
PYTEST_ARGS ?=
PIP_FLAGS ?= --quiet

# Captured now: demo.mk's targets run with PYTHON set to the environment's interpreter.
BOOTSTRAP_PYTHON := $(PYTHON)
MIN_PYTHON := (3, 10)
VENV_PYTHON := $(VENV)/bin/python
PIP := $(VENV_PYTHON) -m pip
PIP_INSTALL = $(PIP) install $(PIP_FLAGS) -c $(CONSTRAINTS)
CONSTRAINTS := constraints.txt
# The environment is rebuilt (pip skips what is already satisfied) when one of these changes.
ENV_INPUTS := Makefile setup.cfg pyproject.toml $(CONSTRAINTS) tools/install_detectron2.py
ENV_HASH := $(shell $(BOOTSTRAP_PYTHON) -c 'import hashlib, sys; \
	print(hashlib.sha256(b"".join(open(f, "rb").read() for f in sys.argv[1:])).hexdigest()[:16])' \
	$(ENV_INPUTS))
ENV_STAMP := $(VENV)/.sam-detr-env-$(ENV_HASH)

.PHONY: env test test-upstream clean-env

env: $(ENV_STAMP)
	@echo "== SAM-DETR environment ($(VENV)) =="
	@PYTHONWARNINGS=ignore::FutureWarning $(VENV_PYTHON) -m sam_detr.environment

$(ENV_STAMP):
	@$(BOOTSTRAP_PYTHON) -c 'import sys; sys.exit(sys.version_info < $(MIN_PYTHON))' \
		|| { echo "make env: $(BOOTSTRAP_PYTHON) is older than Python $(MIN_PYTHON)"; exit 1; }
	@test -x $(VENV_PYTHON) || { echo "== creating $(VENV) with $(BOOTSTRAP_PYTHON) =="; \
		$(BOOTSTRAP_PYTHON) -m venv $(VENV); }
	@echo "== build tools, then torch + torchvision (pinned in $(CONSTRAINTS)) =="
	$(PIP_INSTALL) setuptools wheel
	$(PIP_INSTALL) torch torchvision
	@echo "== sam-detr (editable), its dependencies and the export extra; torch is kept =="
	$(PIP_INSTALL) --no-build-isolation -e ".[dev,export]"
	@echo "== detectron2: (a) keep an importable one, (b) upstream git, (c) pb1-detectron2 =="
	$(VENV_PYTHON) tools/install_detectron2.py -c $(CONSTRAINTS)
	@rm -f $(VENV)/.sam-detr-env-*
	@touch $@

test: env
	$(VENV_PYTHON) -m pytest $(PYTEST_ARGS)

# `make test-upstream D2_SRC=/path/to/detectron2`: the suite against upstream Detectron2's
# Python package (a checkout of github.com/facebookresearch/detectron2; its detectron2/ goes
# ahead on PYTHONPATH, no build needed). Tests that only concern the fallback skip themselves.
D2_SRC ?=
test-upstream: env
	@test -f "$(D2_SRC)/detectron2/__init__.py" || { echo "make test-upstream: D2_SRC='$(D2_SRC)' \
		is not a Detectron2 checkout (git clone https://github.com/facebookresearch/detectron2)"; \
		exit 1; }
	PYTHONPATH=$(abspath $(D2_SRC))$${PYTHONPATH:+:$$PYTHONPATH} $(VENV_PYTHON) -c \
		'import detectron2, sys; print("detectron2 from", detectron2.__file__); \
		sys.exit(not detectron2.__file__.startswith("$(abspath $(D2_SRC))"))'
	PYTHONPATH=$(abspath $(D2_SRC))$${PYTHONPATH:+:$$PYTHONPATH} $(VENV_PYTHON) -m pytest $(PYTEST_ARGS)

clean-env:
	rm -rf $(VENV) build/detectron2

# ---- `make demo` (the training pipeline) lives in demo.mk ----------------------------------
ifneq ($(wildcard demo.mk),)
include demo.mk
demo: PYTHON = $(VENV_PYTHON)
endif
