# The two commands of the README: `make demo` and `make test`. Everything they need installs from here.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test soak system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch pinned to the CPU build on disk in the same command, so that topaz-em (and its torchvision) do not
	# pull a CUDA build of several GB
	$(BIN)/pip install --quiet -e '.[test,topaz]' 'torch==2.13.0'
	touch $(STAMP)

system-deps:
	bash scripts/install_system_deps.sh

# `make demo TOMO=1`: the live tomography session instead (tomo_live; needs no Relion)
# `make demo KEEP=1`: keep the session dashboard (its URL is printed at the start) running afterwards, until Ctrl-C
TOMO_DEMO := $(filter 1,$(TOMO))
demo: $(STAMP) $(if $(TOMO_DEMO),,system-deps)
	$(BIN)/python -m airflow_provider_cryoem.demo $(if $(TOMO_DEMO),--tomo) $(if $(filter 1,$(KEEP)),--keep-dashboard)

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -ra -q

# `make soak`: three live sessions and a reprocessing run on Celery with faults at random times, then the books
# checked (benchmarks/soak_live.py; about 15 minutes on 2 cores; SOAK_ARGS="--help" lists its settings)
soak: $(STAMP) system-deps
	$(BIN)/python benchmarks/soak_live.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) demo_output .airflow_demo
