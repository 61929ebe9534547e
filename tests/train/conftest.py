import pytest


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, shared_data):
    """People's Daily dev sentences prepared into train/val/test like a user would."""
    from nerft.data.prepare import prepare, write_prepared

    out = tmp_path_factory.mktemp("data")
    prep = prepare([shared_data / "PeoplesDaily" / "example.dev"])
    write_prepared(prep, out, ratios=(0.7, 0.15, 0.15), seed=42)
    return out
