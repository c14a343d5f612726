# The two commands of the README:
#   make book   set up everything, then build the book executing every notebook (book preset)
#   make test   set up everything, then run every test (what CI runs: .ci/run)
# Set-up is a virtual environment in .venv with the pinned packages of requirements.txt,
# mamllib installed editable, and a Jupyter kernel registered inside that environment.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# One thread per process: CI has 2 cores, and the small networks here gain nothing from
# more; it also keeps the notebooks' numbers identical between runs.
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
PRESET ?= book
# Where pip takes torch from: empty for the package index's default build; e.g.
# https://download.pytorch.org/whl/cpu for the CPU-only build on a machine without a GPU
# (much smaller), or a CUDA index (https://download.pytorch.org/whl/cu128) to match a driver.
TORCH_INDEX ?=
TORCH_VERSION := $(shell sed -n 's/^torch==//p' requirements.txt)
# Where datasets are read from (the Omniglot chapter): a local copy if one sits beside the
# repository, as in CI; otherwise mamllib downloads from the official source.
ifeq ($(origin MAMLLIB_DATA), undefined)
  ifneq ($(wildcard $(CURDIR)/../shared/data/omniglot),)
    export MAMLLIB_DATA := $(abspath $(CURDIR)/../shared/data)
  endif
endif

.PHONY: setup book test test-unit test-notebooks test-book test-executed lint lab clean \
	benchmark

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION) \
		--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 \
		--display-name "Python 3 (mamllib)"
	touch $(STAMP)

# --all: Sphinx re-reads (and so re-executes) only pages whose source changed; a change to
# mamllib alone changes none.
book: $(STAMP)
	MAMLLIB_PRESET=$(PRESET) $(BIN)/jupyter-book build . --all -W -n --keep-going
	@echo "The book is at _build/html/index.html"

# Two lanes side by side (CI has 2 cores; every process uses one thread): the unit tests
# in one; in the other the notebooks under nbval, then the book build, which reuses the
# ci-preset run folders nbval left in results/. Each lane's output is printed when it
# ends (--output-sync). `make test-unit test-notebooks test-book` runs them one by one.
test: $(STAMP) lint
	@echo "unit tests | notebooks, then the book: two lanes, each printed when it ends"
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-unit test-executed

test-executed: $(STAMP)
	$(NBVAL)
	$(BOOK_CI)

lint: $(STAMP)
	$(BIN)/ruff check mamllib tests benchmarks
	$(BIN)/python tests/check_notebooks.py

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests -q

# Every notebook (chapters and book pages) at the ci preset, with assertion cells as tests
# and golden outputs from tests/golden_outputs.json.
NBVAL = MAMLLIB_PRESET=ci CI=true $(BIN)/python -m pytest -q -p tests.nbval_golden \
	--nbval-lax --nbval-cell-timeout=600 notebooks book
test-notebooks: $(STAMP)
	$(NBVAL)

# The book at the ci preset with warnings as errors, so broken references fail. It is
# built in _build/ci, so that the book `make book` built in _build/html stays.
BOOK_CI = rm -rf _build/ci && \
	MAMLLIB_PRESET=ci CI=true $(BIN)/jupyter-book build . --all -W -n --keep-going \
	--path-output _build/ci
test-book: $(STAMP)
	$(BOOK_CI)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

benchmark: $(STAMP)
	$(BIN)/python benchmarks/targets.py

clean:
	rm -rf _build results
