import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared corpora: $NERFT_DATA, else ../shared/data next to the repository."""
    path = Path(os.environ.get("NERFT_DATA") or REPO_ROOT / ".." / "shared" / "data")
    if not path.is_dir():
        pytest.skip(f"corpus directory {path} not found: set NERFT_DATA to the shared data directory")
    return path.resolve()
