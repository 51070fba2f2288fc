# asit: set-up, tests and the reproduction. `make help` lists the targets.
#
# The first target that needs it creates .venv with uv (compiled bytecode, so `import torch`
# stays fast) from the pinned constraints.txt. Nothing outside the repository is touched
# except the Jupyter kernel spec, which lives inside .venv.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PRESET ?= cpu
STAMP  := $(VENV)/.installed-stamp
BUILTIN_DATA := data/builtin/.complete

# Honour the extra indexes and find-links that pip is configured with (uv ignores pip's config).
PIP_EXTRA_INDEXES := $(shell $(PYTHON) -m pip config get global.extra-index-url 2>/dev/null)
PIP_FIND_LINKS    := $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)
UV_FLAGS := --index-strategy unsafe-best-match --compile-bytecode \
	$(foreach u,$(PIP_EXTRA_INDEXES),--extra-index-url $(u)) \
	$(foreach u,$(PIP_FIND_LINKS),--find-links $(u))

NBVAL_FLAGS := --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg

.PHONY: help venv data reproduce test test-unit test-notebooks lab bench lock clean

help:
	@echo "make reproduce   set up, build the built-in data, run every notebook (PRESET=$(PRESET))"
	@echo "make test        set up, run the unit tests and the notebook tests (nbval, smoke preset)"
	@echo "make lab         JupyterLab on notebooks/ with the project's kernel"
	@echo "make bench       python -m asit.bench (prints and writes results/benchmarks/)"
	@echo "make data        (re)build the built-in data sets under data/builtin"
	@echo "make lock        re-pin constraints.txt from the current .venv"

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m pip install -q uv
	test -x $(PY) || uv venv -q --python $(PYTHON) $(VENV)
	VIRTUAL_ENV=$(VENV) uv pip install -q $(UV_FLAGS) -c constraints.txt -e ".[notebooks,dev,export,suites,book]"
	$(PY) -m ipykernel install --sys-prefix --name asit --display-name "Python (asit)" >/dev/null
	touch $@

data: $(BUILTIN_DATA)

$(BUILTIN_DATA): $(STAMP) asit/datasets/builtin.py
	$(PY) -m asit.datasets.builtin --out data/builtin

reproduce: $(STAMP) $(BUILTIN_DATA)
	$(PY) -m asit.reproduce --preset $(PRESET)

# One pytest run: unit tests and notebooks (nbval), the notebooks forced to the smoke preset.
test: $(STAMP) $(BUILTIN_DATA)
	ASIT_FORCE_PRESET=smoke $(PY) -m pytest tests notebooks $(NBVAL_FLAGS)

test-unit: $(STAMP) $(BUILTIN_DATA)
	$(PY) -m pytest tests

test-notebooks: $(STAMP) $(BUILTIN_DATA)
	ASIT_FORCE_PRESET=smoke $(PY) -m pytest notebooks $(NBVAL_FLAGS)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

bench: $(STAMP) $(BUILTIN_DATA)
	$(PY) -m asit.bench

# The course as a website (Sphinx + MyST-NB) from the executed copies `make reproduce` wrote for
# PRESET: build/book/html/index.html. book-check opens every page in headless Chromium
# (Debian: apt-get install chromium; .ci/run installs it).
.PHONY: book book-check
book: $(STAMP)
	$(PY) -m asit.book --preset $(PRESET)

book-check: book
	$(PY) tests/book_check.py build/book/html

lock: $(STAMP)
	{ head -n 3 constraints.txt; VIRTUAL_ENV=$(VENV) uv pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) data/builtin results/executed results/runs
