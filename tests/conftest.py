"""Fixtures shared by the test modules."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from nodeproc import NodeProc


@pytest.fixture
def procs() -> Iterator[list[NodeProc]]:
    """Node processes a test starts; any still running at the end are killed."""
    started: list[NodeProc] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.stop(signal.SIGKILL)
