import os
import tempfile

import pytest
import torch

# Ahead-of-time artifacts built by tests go to a throw-away cache, never the user's, and none is built in
# the background unless a test asks for it (tests/test_artifacts.py).
os.environ["JASCO_FAST_CACHE_DIR"] = tempfile.mkdtemp(prefix="jasco_fast_test_cache_")
os.environ["JASCO_FAST_BACKGROUND_BUILD"] = "0"

# Before any test module: importing it applies JASCO_FAST_HIDE_UPSTREAM. (tests/ is on pytest's pythonpath,
# pyproject.toml, so the shared checkpoint writers in tests/checkpoints.py import as `checkpoints`.)
from checkpoints import write_transformers_dir  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "upstream_missing(reason): a test oracle that JASCO_FAST_REQUIRE_UPSTREAM=1 "
        "requires is missing (checkpoints.needs_oracle); the test fails",
    )


def pytest_runtest_setup(item):
    mark = item.get_closest_marker("upstream_missing")
    if mark is not None:
        pytest.fail(f"{mark.kwargs['reason']} (JASCO_FAST_REQUIRE_UPSTREAM=1)", pytrace=False)


@pytest.fixture(scope="session")
def tiny_hf_checkpoint(tmp_path_factory):
    """A tiny random-weight transformers EnCodec directory (config.json + model.safetensors)."""
    path, _ = write_transformers_dir(tmp_path_factory.mktemp("tiny_hf"), seed=0)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models: one thread is faster, and on a busy machine OpenMP threads waiting for
    each other can make a call 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
