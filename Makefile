# Two commands set everything up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.jasco_fast_installed
SOURCES = setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/* csrc/cuda/*)

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned, so nothing below can pull a newer (CUDA) build.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q setuptools wheel ninja
	$(BIN)/pip install -q --no-build-isolation -e ".[test]"
	# audiocraft is a test oracle only: its SEANet files are loaded by path, and its own
	# dependencies (a pinned torch, xformers, ...) must not come in.
	$(BIN)/pip install -q --no-deps --no-build-isolation "audiocraft==1.3.0"
	touch $(STAMP)

demo: install
	$(BIN)/jasco-fast demo

test: install
	$(BIN)/python -m pytest -q

# Reruns every benchmark (results JSON in benchmarks/results/) and regenerates the README / notes tables
# from the JSON. Run it on a quiet machine; NOTE="..." is recorded in the JSON (e.g. what else was running).
bench: install
	$(BIN)/jasco-fast bench $(if $(NOTE),--note "$(NOTE)")
	$(BIN)/python benchmarks/tables.py --write

clean:
	rm -rf build *.egg-info jasco_fast/_C*.so $(VENV)
