# flatcomp-tutorial: the two commands of the README, and a few helpers.
#   make book   - set up .venv, execute every chapter on CPU (outputs stored in the notebooks), build the HTML book
#   make test   - set up .venv, run the unit tests, re-execute every chapter with pytest --nbval, then make smoke
#   make smoke  - execute every chapter's scale="paper" branch whole at smoke size on fabricated data (minutes)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# A reproducible local/CI environment: the CPU build of torch 2.13.0 (requirements.txt itself never pins torch).
TORCH  ?= torch==2.13.0
THREADS ?= 2
export FLATCOMP_PROGRESS = 0
export OMP_NUM_THREADS = $(THREADS)
export PYDEVD_DISABLE_FILE_VALIDATION = 1

.PHONY: install book execute html test unit smoke bench sweep late-phase generalisation beyond cost clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -c "import flatcomp_tutorial, torch; print('flatcomp_tutorial', flatcomp_tutorial.__version__, '| torch', torch.__version__)"
	touch $@

book: install execute html
	@echo "Book built: $(abspath _build/html/index.html)"

execute: install
	$(PY) -m flatcomp_tutorial.notebooks execute

html: install
	$(VENV)/bin/jupyter-book build -W -n --keep-going book/

# pyproject.toml deselects the paper_smoke tests by default (addopts); they run in their own step, make smoke.
test: install
	$(PY) -m pytest -p no:cacheprovider --nbval --nbval-current-env \
		--nbval-cell-timeout 600 tests book
	$(MAKE) --no-print-directory smoke

# Every chapter's scale="paper" branch, executed whole at smoke size (tests/test_paper_smoke.py).
smoke: install
	$(PY) -m pytest -p no:cacheprovider -m paper_smoke --durations=0 tests/test_paper_smoke.py

# the fast unit suite: without the integration tests (notebooks, subprocesses, recomputed stored runs: make test)
unit: install
	$(PY) -m pytest -p no:cacheprovider -m "not paper_smoke and not integration" tests

# The cpu-preset learning-rate x batch-size sweep of chapter "Reproduction II" (24 runs, resumable: finished runs
# are skipped; the chapter's measures, fc.presets.sweep_spec).
sweep: install
	$(PY) -c "import flatcomp_tutorial as fc; r = fc.sweep(None, fc.presets.sweep_spec('cpu'), store='data/results/cpu_sweep.jsonl', threads=1, progress=True); print(f'{len(r.ran)} runs done, {len(r.skipped)} already in {r.store}')"

# The shipped cost measurement of chapter "Running at paper scale": one CPU thread, every architecture and batch size,
# whole checkpoints timed for the MLP and the ViT (VGG-11's would take hours on one core); 45 minutes here. Appends
# one record to data/results/paper_costs.jsonl. On a GPU: python -m flatcomp_tutorial.cost (times everything).
cost: install
	$(PY) -m flatcomp_tutorial.cost --device cpu --threads 1 --repeats 5 --checkpoint mlp vit --store data/results/paper_costs.jsonl

# The multi-seed late-phase store of chapter "Reproduction I: the late phase" (5 arms x 5 seeds, resumable).
late-phase: install
	$(PY) -c "import flatcomp_tutorial as fc; from flatcomp_tutorial.presets import late_phase_grid, late_phase_spec; r = fc.sweep(late_phase_grid(), late_phase_spec(), store='data/results/cpu_late_phase.jsonl', device='cpu', threads=1, progress=True); print(f'{len(r.ran)} runs done, {len(r.skipped)} already in {r.store}, {len(r.failures)} failed')"

# The 10-class generalisation store of chapter "Beyond the paper", section 3 (3 lr x 3 B x 3 seeds, resumable).
generalisation: install
	$(PY) -c "import flatcomp_tutorial as fc; from flatcomp_tutorial.presets import generalisation_grid, generalisation_spec; r = fc.sweep(generalisation_grid(), generalisation_spec(), store='data/results/cpu_generalisation.jsonl', device='cpu', threads=1, progress=True); print(f'{len(r.ran)} runs done, {len(r.skipped)} already in {r.store}, {len(r.failures)} failed')"

# The runs of chapter "Beyond the paper" (6 training methods x 3 seeds, float64, with attacks; resumable).
beyond: install
	$(PY) -c "import flatcomp_tutorial as fc; from flatcomp_tutorial.presets import beyond_grid, beyond_spec; r = fc.sweep(beyond_grid(), beyond_spec(), store='data/results/cpu_beyond.jsonl', device='cpu', threads=1, progress=True); print(f'{len(r.ran)} runs done, {len(r.skipped)} already in {r.store}, {len(r.failures)} failed')"

bench: install
	$(PY) -m pip install --quiet --no-deps -r benchmarks/requirements.txt
	$(PY) benchmarks/run.py --threads $(THREADS)

clean:
	rm -rf book/_build
