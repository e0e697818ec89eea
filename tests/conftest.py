import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the shared checkpoint writers in tests/checkpoints.py

from checkpoints import write_transformers_dir  # noqa: E402


@pytest.fixture(scope="session")
def tiny_hf_checkpoint(tmp_path_factory):
    """A tiny random-weight transformers EnCodec directory (config.json + model.safetensors)."""
    path, _ = write_transformers_dir(tmp_path_factory.mktemp("tiny_hf"), seed=0)
    return path
