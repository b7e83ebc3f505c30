"""Fixtures of the reliability tests (helpers in :mod:`.helpers`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from .helpers import write_tiny_dataset


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One thread: on a busy 2-core machine two OpenMP threads run up to ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny three-category dataset, written once per module."""
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny") / "parts")
