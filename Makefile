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

.PHONY: env test clean-env

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
	@echo "== sam-detr (editable) and its dependencies; torch is kept by the constraints =="
	$(PIP_INSTALL) --no-build-isolation -e ".[dev]"
	@echo "== detectron2: (a) keep an importable one, (b) upstream git, (c) pb1-detectron2 =="
	$(VENV_PYTHON) tools/install_detectron2.py -c $(CONSTRAINTS)
	@rm -f $(VENV)/.sam-detr-env-*
	@touch $@

test: env
	$(VENV_PYTHON) -m pytest $(PYTEST_ARGS)

clean-env:
	rm -rf $(VENV) build/detectron2

# ---- `make demo` (the training pipeline) lives in demo.mk ----------------------------------
ifneq ($(wildcard demo.mk),)
include demo.mk
demo: PYTHON = $(VENV_PYTHON)
endif
