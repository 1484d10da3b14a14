"""The tuning benchmark and the cluster example run as their how-to pages say.

``benchmarks/bench_tuning.py --quick --plot`` prints its table and writes its figure;
``examples/on_a_cluster.py`` writes, on every backend (local pool, MPI under ``mpiexec``, a Dask
``LocalCluster``, queued jobs on the local Slurm), the output file of a serial run byte for byte.
"""

import importlib.util
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from helpers import MPIEXEC, driver_env
from wfl_like.autoparallelize.remote.registry import JobRegistry

ROOT = Path(__file__).resolve().parents[1]
BENCH_TUNING = ROOT / "benchmarks" / "bench_tuning.py"
ON_A_CLUSTER = ROOT / "examples" / "on_a_cluster.py"
# a third of the bundled structures, in chunks of 2 and jobs of 4: several chunks per worker
# and several array tasks, in seconds
SMALL = ("--structures", "12", "--chunk-size", "2")
RUN_TIMEOUT = 150
pytestmark = pytest.mark.timeout(2 * RUN_TIMEOUT)


def has_module(name):
    return importlib.util.find_spec(name) is not None


def example_env():
    """The driver's environment without the settings that would change where the work runs."""
    env = driver_env()
    env.pop("WFL_MPIPOOL", None)
    env.pop("WFL_EXPYRE_INFO", None)
    return env


def run_example(*args, cwd, launcher=()):
    return subprocess.run([*launcher, sys.executable, str(ON_A_CLUSTER), *args], cwd=cwd, env=example_env(),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)


def run_backend(backend, workdir, *more, launcher=()):
    """The output bytes of the example on ``backend`` in ``workdir``, what it printed, and how its
    manifest says the work was spread (``run_by``): proof that the backend ran it, not a serial fallback."""
    workdir.mkdir(exist_ok=True)
    output = workdir / f"{backend}.xyz"
    done = run_example("--backend", backend, "-o", str(output), *SMALL, *more, cwd=workdir, launcher=launcher)
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = json.loads(output.with_name(output.name + ".manifest.json").read_text())
    return output.read_bytes(), done.stdout, manifest["run_by"]


@pytest.fixture(scope="module")
def serial_output(tmp_path_factory):
    output, stdout, run_by = run_backend("pool", tmp_path_factory.mktemp("serial"), "-n", "0")
    assert stdout.startswith("12 structures evaluated on pool"), stdout
    assert run_by["num_python_subprocesses"] == 0
    return output


@pytest.mark.skipif(not has_module("matplotlib"), reason="matplotlib is not installed (the plot needs it)")
def test_tuning_benchmark_quick_writes_a_plot(tmp_path):
    figure = tmp_path / "tmp" / "x.png"
    done = subprocess.run([sys.executable, str(BENCH_TUNING), "--quick", "--plot", str(figure)], cwd=tmp_path,
                          env=driver_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert figure.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    # one table per op, one row per worker count of --quick (serial and 2)
    assert done.stdout.count("| workers | chunk 1 |") == 2, done.stdout
    assert done.stdout.count("| 0 (serial) |") == 2 and done.stdout.count("\n| 2 |") == 2, done.stdout
    assert f"figure written to {figure}" in done.stdout


def test_pool_gives_the_serial_output(serial_output, tmp_path):
    output, _, run_by = run_backend("pool", tmp_path, "-n", "2")
    assert output == serial_output
    assert run_by["num_python_subprocesses"] == 2


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (install the mpi extra)")
@pytest.mark.skipif(not (has_module("mpi4py") and has_module("mpipool")),
                    reason="mpi4py and mpipool are not installed (install the mpi extra)")
def test_mpi_under_mpiexec_gives_the_serial_output(serial_output, tmp_path):
    output, stdout, run_by = run_backend("mpi", tmp_path, launcher=(MPIEXEC, "-n", "3"))
    assert output == serial_output
    assert run_by["executor"] == "MPI (WFL_MPIPOOL)"
    # the worker ranks never ran the rest of the script: one summary line, from rank 0
    assert stdout.count("structures evaluated") == 1, stdout


@pytest.mark.skipif(not has_module("distributed"), reason="distributed is not installed (pip install distributed)")
def test_dask_local_cluster_gives_the_serial_output(serial_output, tmp_path):
    output, _, run_by = run_backend("dask", tmp_path, "-n", "2")
    assert output == serial_output
    assert run_by["executor"] == "ClientExecutor"


@pytest.mark.slurm
def test_slurm_job_arrays_give_the_serial_output(serial_output, tmp_path):
    # a unique job name: other runs may share the cluster
    output, _, run_by = run_backend("slurm", tmp_path, "-n", "1", "--per-job", "4",
                                    "--job-name", f"wfl_like_example_{uuid.uuid4().hex[:8]}")
    assert output == serial_output
    assert run_by["queued_jobs"] is True
    # 12 structures, 4 per job: 3 tasks, submitted as one job array
    registry = JobRegistry(tmp_path / ".slurm.xyz.journal.jobs")
    try:
        tasks = dict(registry.tasks)
    finally:
        registry.close()
    jobs = [job for entry in tasks.values() for job in entry.jobs]
    assert len(tasks) == 3 and len({job_id for job_id, _ in jobs}) == 1, jobs
