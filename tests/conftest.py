"""Fixtures shared by the test files."""

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

SLURM_HOWTO = "run tests/slurm/start_local_slurm.sh (needs root and apt) to run the Slurm tests"


def _slurm_skip_reason():
    """Why the Slurm tests cannot run here, or None when a cluster answers."""
    if shutil.which("sbatch") is None:
        return f"sbatch not found: {SLURM_HOWTO}"
    try:
        answer = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo did not answer ({exc}): {SLURM_HOWTO}"
    if answer.returncode != 0 or not answer.stdout.strip():
        return f"the Slurm cluster does not answer (sinfo: {answer.stderr.strip() or 'no nodes'}): {SLURM_HOWTO}"
    return None


@pytest.fixture(scope="session")
def slurm_cluster():
    """Skip the test unless a Slurm cluster answers on this machine (sbatch, squeue, scancel work)."""
    reason = _slurm_skip_reason()
    if reason is not None and os.environ.get("WFL_LIKE_REQUIRE_SLURM") == "1":
        # CI starts a cluster and sets this: there a missing cluster is a failure, not a skip
        pytest.fail(f"WFL_LIKE_REQUIRE_SLURM=1 but {reason}")
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def one_slurm_test_at_a_time(slurm_cluster):
    """Hold this machine's Slurm lock for the test: one node runs every job, so a test running
    beside another (in the other test process, or another session) would see its jobs queue
    behind the other's, or the controller the other restarts."""
    with open(Path(tempfile.gettempdir()) / "wfl_like-slurm-tests.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def pytest_collection_modifyitems(items):
    # every test marked `slurm` needs the cluster, and takes its turn on it
    for item in items:
        if item.get_closest_marker("slurm") is not None and "one_slurm_test_at_a_time" not in item.fixturenames:
            item.fixturenames.insert(0, "one_slurm_test_at_a_time")


def pytest_itemcollected(item):
    # The Slurm tests in one test process, one after another, so that neither process waits
    # for the other's turn (pytest-xdist's groups; beside pytest 9.2, whose node ids it fails
    # to rename, it ignores them, and the lock above still keeps the tests apart).
    if item.get_closest_marker("slurm") is not None:
        item.add_marker(pytest.mark.xdist_group("slurm"))
