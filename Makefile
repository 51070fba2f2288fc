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

# Debian packages the set-up needs: espeak-ng and sox speak and shape the built-in speech data,
# libsndfile1 is soundfile's C library (for the pure-Python soundfile wheel). Each is checked by
# what it provides, so other systems (conda, Homebrew) pass when they have them.
SYSTEM_PACKAGES := espeak-ng sox libsndfile1

.PHONY: help system venv data reproduce test test-unit test-notebooks lab bench lock clean label-efficiency course-checkpoint \
	label-efficiency-headline \
	le-esc50 le-ks2 le-ks2_cmn le-ks2_cmn_lpft le-voxceleb1 le-fresh-seeds le-diagnosis le-neighbours le-pretraining-seeds

help:
	@echo "make reproduce   set up, build the built-in data, run every notebook (PRESET=$(PRESET))"
	@echo "make test        set up, run the unit tests and the notebook tests (nbval, smoke preset)"
	@echo "make lab         JupyterLab on notebooks/ with the project's kernel"
	@echo "make bench       python -m asit.bench (prints and writes results/benchmarks/)"
	@echo "make label-efficiency  the label-efficiency sweep of the course encoder, 5 seeds (results/label_efficiency/; -j2: 2 at once)"
	@echo "make label-efficiency-headline  notebook 06's own sweep again, 3 seeds (results/label_efficiency/cpu.json, what make reproduce reads)"
	@echo "make le-pretraining-seeds  the course settings pretrained with seeds $(PRETRAINING_SEEDS), each checked at 4 labels per class (hours; results/label_efficiency/course_pretraining_*)"
	@echo "make course-checkpoint pretrain the course encoder once and copy it to results/course_checkpoint/"
	@echo "make data        (re)build the built-in data sets under data/builtin"
	@echo "make system      check the system packages ($(SYSTEM_PACKAGES)); as root, install them"
	@echo "make lock        re-pin constraints.txt from the current .venv"

# Installs what is missing as root with apt (the list first: a fresh image has none), otherwise
# stops with the one command to run. Runs before everything else, on every make.
system:
	@missing=""; \
	command -v espeak-ng >/dev/null 2>&1 || missing="$$missing espeak-ng"; \
	command -v sox >/dev/null 2>&1 || missing="$$missing sox"; \
	{ ldconfig -p 2>/dev/null | grep -q 'libsndfile\.so' || dpkg -s libsndfile1 >/dev/null 2>&1; } \
		|| missing="$$missing libsndfile1"; \
	[ -z "$$missing" ] && exit 0; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing the system packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $$missing >/dev/null || exit 1; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "missing system packages; run: sudo apt-get update && sudo apt-get install -y$$missing"; exit 1; \
	elif command -v brew >/dev/null 2>&1; then \
		echo "missing system packages; run: brew install$$missing" | sed 's/libsndfile1/libsndfile/'; exit 1; \
	else \
		echo "missing system packages:$$missing; install them, or use conda: conda env create -f environment.yml"; \
		exit 1; \
	fi

venv: $(STAMP)

# uv takes a version's wheel from the first index that lists it, which can be soundfile's
# pure-Python wheel although a wheel with libsndfile bundled exists for this platform; pip picks
# the most specific wheel, so ask pip for one and install it when it bundles the library.
$(STAMP): pyproject.toml constraints.txt | system
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m pip install -q uv
	test -x $(PY) || uv venv -q --python $(PYTHON) $(VENV)
	VIRTUAL_ENV=$(VENV) uv pip install -q $(UV_FLAGS) -c constraints.txt -e ".[notebooks,dev,export,suites,book]"
	@wheels=$$(mktemp -d); \
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: -c constraints.txt soundfile -d $$wheels \
		>/dev/null 2>&1; \
	if $(PYTHON) -c "import sys, zipfile; names = zipfile.ZipFile(sys.argv[1]).namelist(); \
		sys.exit(not any('_soundfile_data/libsndfile' in n for n in names))" $$wheels/soundfile-*.whl \
		2>/dev/null; then \
		VIRTUAL_ENV=$(VENV) uv pip install -q --reinstall --no-deps $$wheels/soundfile-*.whl; \
		echo "soundfile: the wheel with libsndfile bundled"; \
	else echo "soundfile: no wheel with libsndfile bundled for this platform; using the system library"; fi; \
	rm -rf $$wheels
	$(PY) -m ipykernel install --sys-prefix --name asit --display-name "Python (asit)" >/dev/null
	rm -rf $(VENV)/share/jupyter/kernels/python3  # the same Python as "asit": one kernel, one name
	touch $@

data: $(BUILTIN_DATA)

$(BUILTIN_DATA): $(STAMP) asit/datasets/builtin.py | system
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

# The sweep that `make reproduce` reads (notebook 06 reads it when its parameters are the file's, and
# a test holds them together): the notebook run again with its own parameters, two tasks at once.
label-efficiency-headline: $(STAMP) $(BUILTIN_DATA)
	OMP_NUM_THREADS=1 $(PY) -m asit.reproduce --preset cpu --only 06 -p rerun True -p jobs 2

# The label sweep with more seeds than notebook 06 runs: 1, 2, 4, 8, all labels per class, probe and
# fine-tuning, the course encoder (results/course_checkpoint) against 5 random inits and the pooled fbank;
# ESC-50 on all five test folds. One process a task, one thread each: `make -j2 label-efficiency` runs
# two side by side (each task's rows depend on that task alone). README.md's block lists the files.
LE_ENCODER ?= results/course_checkpoint/encoder
LE_SWEEP = OMP_NUM_THREADS=1 $(PY) -m asit.label_efficiency $(LE_ENCODER) --seeds 5
label-efficiency: le-esc50 le-ks2 le-ks2_cmn le-ks2_cmn_lpft le-voxceleb1 le-fresh-seeds le-diagnosis le-neighbours
	$(PY) -m asit.readme
le-esc50: $(STAMP) $(BUILTIN_DATA)
	$(LE_SWEEP) --tasks esc50 --folds 1-5 --name course_5seeds_5folds_esc50
le-ks2 le-ks2_cmn le-voxceleb1: le-%: $(STAMP) $(BUILTIN_DATA)
	$(LE_SWEEP) --tasks $* --name course_5seeds_$*
# The keywords fine-tuned with the lpft recipe (the head fitted on frozen features first, then
# 300 steps at a lower rate): fine-tuning only, 5 seeds (its json records how long it took).
le-ks2_cmn_lpft: $(STAMP) $(BUILTIN_DATA)
	$(LE_SWEEP) --tasks ks2_cmn --protocols finetune --finetune-recipe lpft --name course_5seeds_ks2_cmn_lpft
# The probe at 4 labels per class, every read-out, on seeds 5-9, which played no part in choosing
# its `dino` read-out (that was done on seeds 0-4, the sweeps above: results/HISTORY.md).
le-fresh-seeds: $(STAMP) $(BUILTIN_DATA)
	$(LE_SWEEP) --first-seed 5 --tasks esc50,ks2_cmn --folds 1-5 --shots 4 --protocols probe --jobs 2 --name course_5fresh_seeds_probe
le-diagnosis: $(STAMP) $(BUILTIN_DATA)
	OMP_NUM_THREADS=1 $(PY) -m asit.label_efficiency $(LE_ENCODER) --name course --diagnose --shots 4
# What a clip's nearest neighbour shares: the word or the voice (KS2), the channel or the voice (VoxCeleb1).
le-neighbours: $(STAMP) $(BUILTIN_DATA)
	OMP_NUM_THREADS=1 $(PY) -m asit.neighbours $(LE_ENCODER) --name course
	OMP_NUM_THREADS=1 $(PY) -m asit.neighbours $(LE_ENCODER) --name course --task voxceleb1

# The headline's pretrained encoder is one pretraining run (seed 0). This pretrains the course settings
# with the other seeds too, as `make course-checkpoint` does (into results/runs/, two at once, one core
# each), and checks every encoder at 4 labels per class: course_pretraining_seed<N>.json per seed and
# course_pretraining_seeds.json over them. Each step whose output exists is skipped.
PRETRAINING_SEEDS ?= 0-5
le-pretraining-seeds: $(STAMP) $(BUILTIN_DATA)
	OMP_NUM_THREADS=1 $(PY) -m asit.pretraining_seeds --seeds $(PRETRAINING_SEEDS) --jobs 2
	$(PY) -m asit.readme

# Pretrains asit.course.COURSE_SETTINGS (the cpu preset on the built-in pool with the unlabelled clips,
# 12 epochs) and copies the encoder, config, logs and summary to results/course_checkpoint/: the
# committed course encoder is this output. COURSE_EPOCHS=N: a shorter look. One thread: the committed
# losses were recorded so (the test compares them bit for bit on the CPU vendor that recorded them),
# and small tensors run faster so.
# MKL_CBWR=AVX2: MKL's AVX2 path on any x86-64 CPU, so a newer Intel CPU computes the same steps (the
# committed first steps are what that path gives; asit/course.py says why, and its REPRODUCIBLE_ENV,
# which a test holds this line to, names both settings).
COURSE_EPOCHS ?=
course-checkpoint: $(STAMP) $(BUILTIN_DATA)
	MKL_CBWR=AVX2 OMP_NUM_THREADS=1 $(PY) -m asit.course $(if $(COURSE_EPOCHS),--epochs $(COURSE_EPOCHS))

# Only the project's kernel in the launcher: ipykernel's own "Python 3" would be the same
# interpreter under another name, which the notebooks do not ask for (papermill and nbval still
# find it, as jupyter_client's native kernel, outside the lab). Jupyter refuses root
# (a container's usual user) unless told.
lab: $(STAMP) $(BUILTIN_DATA)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks --KernelSpecManager.ensure_native_kernel=False \
		--MappingKernelManager.default_kernel_name=asit \
		$(if $(filter 0,$(shell id -u)),--allow-root)

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
