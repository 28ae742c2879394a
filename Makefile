# minirec — every target makes .venv if it is missing and installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install -q --disable-pip-version-check
# pytest workers: 2 on the 2-core CI machine; override with `make test JOBS=4`
JOBS   ?= 2
# one BLAS thread per pytest worker (2 workers × 2 BLAS threads oversubscribe 2 cores);
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are left as the machine sets them
TESTENV := OPENBLAS_NUM_THREADS=1

.PHONY: tour test test-fast test-oracle docs bench notebooks lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

tour: $(BIN)/python
	$(PIP) -e .
	$(BIN)/minirec tour

# the whole suite: unit tests and every tutorial notebook, executed
test: $(BIN)/python
	$(PIP) -e ".[test,docs]"
	$(BIN)/ruff check .
	$(TESTENV) $(BIN)/python -m pytest -n $(JOBS) -m "not slow" tests --nbmake tutorials

test-fast: $(BIN)/python
	$(PIP) -e ".[test]"
	$(TESTENV) $(BIN)/python -m pytest -n $(JOBS) -m "not slow" tests

# PyTorch float64 comparisons (CPU build of torch 2.13.0)
test-oracle: $(BIN)/python
	$(PIP) -e ".[test,oracle]"
	$(TESTENV) $(BIN)/python -m pytest -n $(JOBS) -m oracle tests

docs: $(BIN)/python
	$(PIP) -e ".[docs]"
	$(BIN)/python docs/gen_pages.py
	$(BIN)/mkdocs build --strict

# at most 1 s of repeats per measurement (the default 3 s made the full run ~1 h)
BENCH_ARGS ?= --budget 1
bench: $(BIN)/python
	$(PIP) -e .
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(BIN)/minirec bench $(BENCH_ARGS)

# re-execute every tutorial in place and merge its progress-bar output (commit the result)
notebooks: $(BIN)/python
	$(PIP) -e ".[test,docs]"
	for nb in tutorials/*.ipynb; do \
	  $(TESTENV) $(BIN)/jupyter nbconvert --to notebook --execute --inplace $$nb && \
	  $(BIN)/jupyter nbconvert --coalesce-streams --inplace $$nb || exit 1; \
	done

lint: $(BIN)/python
	$(PIP) -e ".[test]"
	$(BIN)/ruff check .

clean:
	rm -rf site build *.egg-info .pytest_cache
