"""Fixtures shared by the test modules."""

import pytest

from tests.fakes import synthetic_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A small synthetic dataset (60 users, 80 items), one per test module; a module may define its own."""
    return synthetic_dataset(tmp_path_factory.mktemp("artifacts"), n_users=60, n_items=80)
