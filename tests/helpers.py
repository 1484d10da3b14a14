"""Small helpers shared by the tests: directory listings, processes, driver scripts."""

import os
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path


def listing(directory):
    """Sorted names in ``directory``, leaving out the run journal (``.NAME.journal.sqlite``
    and SQLite's companions) and the manifest (``NAME.manifest.json``), which a run keeps
    beside its outputs on purpose."""
    return sorted(p.name for p in directory.iterdir()
                  if ".journal.sqlite" not in p.name and not p.name.endswith(".manifest.json"))


def process_state(pid):
    """The State letter of /proc/<pid>/status, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return line.split()[1]
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def is_running(pid):
    """A process exists and is not a zombie (a zombie has exited, only not been reaped)."""
    return process_state(pid) not in (None, "Z", "X")


def group_exists(pgid):
    """Whether any process of the process group ``pgid`` is left."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def end_process_group(proc):
    """Kill whatever is left of the session started by ``proc`` (``start_new_session=True``) and reap ``proc``."""
    if group_exists(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait()


def wait_for(predicate, timeout=10.0):
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def driver_env(**more):
    """The environment for a driver script: this one without wfl_like's own settings, plus ``more``."""
    env = dict(os.environ)
    env.pop("WFL_NUM_PYTHON_SUBPROCESSES", None)
    env.pop("WFL_LIKE_START_METHOD", None)
    env.update(more)
    return env


def wait_for_release(release, name, timeout=300.0):
    """Block until the file ``release`` exists: a gate that a test opens when its checks are done.

    A run held here cannot finish before the test has looked at it (or killed it), however
    slowly either is scheduled.  The first wait of ``name`` leaves a file
    ``<release>.waiting-<name>`` beside the gate, so the test can see the run reach it.
    Raises TimeoutError after ``timeout`` seconds, so a gate nobody opens ends its run.
    """
    release = os.fspath(release)
    if os.path.exists(release):
        return
    open(f"{release}.waiting-{name}", "a").close()
    deadline = time.monotonic() + timeout
    while not os.path.exists(release):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} was not created within {timeout} s")
        time.sleep(0.05)


def waiting_at(release):
    """The names that wait (or waited) at the gate ``release`` of :func:`wait_for_release`."""
    directory, base = os.path.split(os.fspath(release))
    prefix = f"{base}.waiting-"
    return sorted(name[len(prefix):] for name in os.listdir(directory or ".") if name.startswith(prefix))


# The folder of this Python's scripts, and the mpiexec of the mpich wheel installed there
# (the mpi extra), else the system's.
BIN = os.path.dirname(sys.executable)
MPIEXEC = shutil.which("mpiexec", path=BIN + os.pathsep + os.environ.get("PATH", ""))


def assert_ok(proc):
    """A command-line run that succeeded and printed no traceback."""
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def assert_usage_error(proc, *words):
    """A command-line run refused as bad input: exit 2, one ``wfl-like: error:`` line naming ``words``."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("wfl-like: error:"), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def cu_cells(n, seed=0):
    """``n`` distinct rattled 4-atom fcc Cu cells, ``info["idx"] = i``."""
    import numpy as np
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    cells = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=rng.uniform(3.5, 3.7), cubic=True)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.info["idx"] = i
        cells.append(atoms)
    return cells


def queued_remote_info(per_job, job_prefix, check_interval, **options):
    """A ``remote_info`` dict for tests on the local Slurm: a unique job name, one core per job,
    no worker pool inside it, and ``tests/`` importable there (the jobs import the tests' ops)."""
    tests = str(Path(__file__).resolve().parent)
    env = {"WFL_NUM_PYTHON_SUBPROCESSES": "0",
           "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    info = {"sys_name": "slurm", "job_name": f"{job_prefix}_{uuid.uuid4().hex[:8]}",
            "resources": {"max_time": "5m", "num_cores": 1}, "num_inputs_per_queued_job": per_job,
            "check_interval": check_interval, "env_vars": env}
    info.update(options)
    return info


def queued_task_dir(output, number):
    """The directory of task ``number`` of the queued call writing ``output``, as its registry names it
    (``task_<number>_<token>``: a task directory is never used twice)."""
    from wfl_like.autoparallelize.remote.registry import JobRegistry

    state = Path(output).with_name(f".{Path(output).name}.journal.jobs")
    registry = JobRegistry(state)
    try:
        return state / registry.tasks[number].name
    finally:
        registry.close()
