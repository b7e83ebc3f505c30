"""Fixtures of the reliability tests (helpers in :mod:`.helpers`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import write_tiny_dataset


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny three-category dataset, written once per module."""
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny") / "parts")
