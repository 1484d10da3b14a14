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


@pytest.fixture
def slurm_cluster():
    """Skip the test unless a Slurm cluster answers on this machine (sbatch, squeue, scancel work).

    Asked for each test, in its turn on the cluster (:func:`pytest_runtest_protocol`): a test
    before it may have restarted the controller."""
    reason = _slurm_skip_reason()
    if reason is not None and os.environ.get("WFL_LIKE_REQUIRE_SLURM") == "1":
        # CI starts a cluster and sets this: there a missing cluster is a failure, not a skip
        pytest.fail(f"WFL_LIKE_REQUIRE_SLURM=1 but {reason}")
    if reason is not None:
        pytest.skip(reason)


def _open_lock(path):
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        # another user's file in a sticky temp dir: a lock needs only a descriptor of it
        return os.open(path, os.O_RDONLY)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """Each Slurm test holds this machine's Slurm lock, from its setup to its teardown.

    One node runs every job: a test beside another (in the other test process, or another
    session) would see its jobs queue behind the other's, or the controller the other
    restarts.  Taken outside the test's time limit, which counts from its setup."""
    if item.get_closest_marker("slurm") is None or shutil.which("sbatch") is None:
        yield
        return
    lock = _open_lock(Path(tempfile.gettempdir()) / "wfl_like-slurm-tests.lock")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        # unlocked before closing: a worker the test forked may still hold the descriptor
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)


def pytest_collection_modifyitems(items):
    # every test marked `slurm` needs the cluster: give it the fixture so that it skips where none answers
    for item in items:
        if item.get_closest_marker("slurm") is not None and "slurm_cluster" not in item.fixturenames:
            item.fixturenames.insert(0, "slurm_cluster")


def pytest_itemcollected(item):
    # The Slurm tests in one test process, one after another, so that neither process waits
    # for the other's turn (pytest-xdist's groups; with pytest 9.2, whose node ids it fails to
    # rename, it ignores them, and the lock above still keeps the tests apart).
    if item.get_closest_marker("slurm") is not None:
        item.add_marker(pytest.mark.xdist_group("slurm"))
