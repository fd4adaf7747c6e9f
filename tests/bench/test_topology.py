"""Processes a benchmark or test stack starts die with the process that started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.topology import ROOT

# The parent: starts a long sleeper (with or without die_with_parent), prints
# its pid, then waits to be killed.
PARENT = """
import os, subprocess, sys, time
from tests.topology import die_with_parent
child = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(60)"],
    start_new_session=True,
    preexec_fn=die_with_parent(os.getpid()) if sys.argv[1] == "yes" else None,
)
print(child.pid, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) counts as gone.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def _child_after_parent_killed(die: bool, wait: float) -> tuple[int, bool]:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, "yes" if die else "no"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline())
    parent.kill()  # SIGKILL: no handler, no finally, no atexit runs
    parent.wait(timeout=10)
    deadline = time.monotonic() + wait
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    return child, _alive(child)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_a_started_process_dies_when_its_starter_is_killed():
    _, alive = _child_after_parent_killed(die=True, wait=10)
    assert not alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_without_it_the_started_process_outlives_its_starter():
    # The case above would pass vacuously if children died anyway.
    child, alive = _child_after_parent_killed(die=False, wait=1)
    try:
        assert alive
    finally:
        if alive:
            os.kill(child, signal.SIGKILL)
