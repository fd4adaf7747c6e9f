"""The production topology for the hardening tests: daphne, a Celery worker and
Celery beat on a fresh database (``tests.topology.stack_running``), shared by
the tests of this folder and stopped after the last one."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.topology import ROOT, Stack, stack_running

LOGS = ROOT / "test-artifacts" / "hardening"


@pytest.fixture(scope="package")
def stack() -> Iterator[Stack]:
    with stack_running(name=f"tollgate_hardening_{os.getpid()}", logs=LOGS) as topology:
        yield topology
