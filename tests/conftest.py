"""Fixtures shared by the test files."""

import os
import shutil
import subprocess

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


# first: pytest-xdist reads the groups in a hook of its own
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    # every test marked `slurm` needs the cluster: give it the fixture so that it skips where none answers
    for item in items:
        if item.get_closest_marker("slurm") is not None:
            if "slurm_cluster" not in item.fixturenames:
                item.fixturenames.insert(0, "slurm_cluster")
            # one node for every job: the Slurm tests run one after another, in one test process,
            # so no test's jobs queue behind another's
            item.add_marker(pytest.mark.xdist_group("slurm"))
