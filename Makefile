# Two commands set everything up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.jasco_fast_installed
UPSTREAM = .upstream
SOURCES = setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/* csrc/cuda/*)

.PHONY: install demo test fuzz bench clean

install: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned, so nothing below can pull a newer (CUDA) build.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q setuptools wheel ninja
	$(BIN)/pip install -q --no-build-isolation -e ".[test]"
	# audiocraft is a test oracle only: its SEANet files are loaded by path, its audio tests run
	# against jasco_fast (tests/test_audiocraft_audio.py, from the unpacked sdist in $(UPSTREAM)),
	# and its own dependencies (a pinned torch, xformers, ...) must not come in.
	mkdir -p $(UPSTREAM)
	$(BIN)/pip download -q --no-deps --no-binary :all: "audiocraft==1.3.0" -d $(UPSTREAM)
	tar -xzf $(UPSTREAM)/audiocraft-1.3.0.tar.gz -C $(UPSTREAM)
	$(BIN)/pip install -q --no-deps --no-build-isolation $(UPSTREAM)/audiocraft-1.3.0.tar.gz "julius==0.2.8"
	touch $(STAMP)

demo: install
	$(BIN)/jasco-fast demo

test: install
	JASCO_FAST_REQUIRE_UPSTREAM=1 $(BIN)/python -m pytest -q

# A long search for checkpoint / latent files that break the readers (tests/fuzz); each kind of failure
# found is saved to tests/fuzz/corpus/, which `make test` replays. FUZZ_EXAMPLES cases per format family.
FUZZ_EXAMPLES ?= 5000
fuzz: install
	JASCO_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) JASCO_FUZZ_SEED=random $(BIN)/python -m pytest -q -s tests/fuzz

bench: install
	$(BIN)/jasco-fast bench

clean:
	rm -rf build *.egg-info jasco_fast/_C*.so $(VENV) $(UPSTREAM)
