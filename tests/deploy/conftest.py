"""Fixtures of the deployment tests (helpers in ``deploy_helpers.py``)."""

from __future__ import annotations

import pytest
from deploy_helpers import Deployments


@pytest.fixture(scope="session")
def deployments(tmp_path_factory: pytest.TempPathFactory) -> Deployments:
    return Deployments(tmp_path_factory)
