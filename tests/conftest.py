import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """Real corpora, read in place: NERFT_DATA, default ../shared/data beside the repo."""
    return Path(os.environ.get("NERFT_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "ccfbdci" / "ccfbdci.jsonl").is_file():
        pytest.fail(f"real corpora not found at {path}; set NERFT_DATA to the shared data folder")
    return path


@pytest.fixture(scope="session")
def qwen_tokenizer():
    """The real Qwen BPE tokenizer with a ChatML template (built once, cached)."""
    from nerft.tiny import qwen_tokenizer as build

    return build()


@pytest.fixture(scope="session")
def tiny_model_dir():
    """A tiny randomly initialised Qwen2 saved like a real model folder."""
    from nerft.tiny import tiny_qwen2

    return tiny_qwen2()
