# bam-dense: two commands do all set-up on a fresh machine.
#   make test   install, then run every test
#   make demo   install, then run the whole chain on generated synthetic data
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints/ci.txt
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bam-dense-core
PYTEST_ARGS ?=
# pytest-xdist workers: the suite's processes are mostly single-threaded, two keep both cores busy. Tests are
# handed out one at a time, longest first (tests/conftest.py LONGEST_FIRST), so no long test runs alone at the end.
TEST_WORKERS ?= 2

CONSTRAINT_FLAG := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)

.PHONY: install test demo lint clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)

# Core + dev extras: re-run only when the project's requirements change.
$(STAMP): pyproject.toml setup.py $(CONSTRAINTS) | $(PY)
	$(PY) -m pip install --disable-pip-version-check -q $(CONSTRAINT_FLAG) -e '.[dev]'
	touch $(STAMP)

# The OpenMMLab stack: the installer is a no-op when mmcv 2.1.0 with working ops is present,
# and installs the cached wheel (~/.cache/bam-dense/wheels) in seconds when it is not.
install: $(STAMP)
	$(PY) -m bam_dense install-openmmlab

test: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist load --maxschedchunk 1 $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/bam-dense demo

lint: $(STAMP)
	$(VENV)/bin/ruff check bam_dense pretrain downstream tests benchmarks
	$(VENV)/bin/lint-imports

clean-venv:
	rm -rf $(VENV)
