# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
#
# TORCH_SPEC: what pip installs for torch before the package. The default is the CPU wheel this project's
#   machines carry. A user with a CUDA torch keeps it with, e.g.:
#     make test VENV_FLAGS=--system-site-packages TORCH_SPEC=
#   (an empty TORCH_SPEC installs no torch; `torch>=2.4` in pyproject.toml is then already satisfied).
# FIDELITY_SPEC: torch-fidelity, the evaluation's reference (tests/test_fs_fidelity.py), installed with --no-deps:
#   its dependencies name torchvision, whose PyPI wheel needs the CUDA torch of its release (pip would pull one);
#   full_scale/evaluation/fidelity.py loads the parts that need no torchvision. Empty: not installed (tests skip).
PYTHON     ?= python3
VENV       ?= .venv
VENV_FLAGS ?=
TORCH_SPEC ?= torch==2.13.0
FIDELITY_SPEC ?= torch-fidelity==0.4.0
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
OUT        ?= runs/demo
PYTEST_ARGS ?= -n 2 --timeout 900

.PHONY: setup demo test proofs notebooks clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	if [ -n "$(TORCH_SPEC)" ]; then $(PY) -m pip install --quiet "$(TORCH_SPEC)"; fi
	$(PY) -m pip install --quiet -e ".[test,notebooks,full]"
	if [ -n "$(FIDELITY_SPEC)" ]; then $(PY) -m pip install --quiet --no-deps "$(FIDELITY_SPEC)"; fi
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m toy demo --out $(OUT)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

proofs: $(STAMP)
	$(PY) -m proofs

notebooks: $(STAMP)
	$(PY) -m toy.notebooks.render --out $(OUT)/notebooks

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
