"""Fixtures of the deployment tests (helpers in ``deploy_helpers.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from deploy_helpers import Deployments


@pytest.fixture(scope="session")
def deployments(tmp_path_factory: pytest.TempPathFactory) -> Deployments:
    return Deployments(tmp_path_factory)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread in every deployment test: the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
