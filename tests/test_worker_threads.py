"""Each worker's native thread pools (BLAS, OpenMP) get a share of the CPUs, not all of them.

Real worker processes report what threadpoolctl says of the libraries they have loaded
and the thread variables of their environment.  No timing is asserted: the point is
the thread counts, which decide the timings.
"""

import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pytest

from helpers import BIN, MPIEXEC
import threadpoolctl
from ase import Atoms

from wfl_like import ConfigSet, OutputSpec
from wfl_like.autoparallelize import autoparallelize
from wfl_like.autoparallelize.workers.pool import START_METHOD_ENV, WorkerPool
from wfl_like.autoparallelize.workers.threads import THREAD_VARIABLES, THREADS_ENV, available_cpus

TESTS_DIR = Path(__file__).resolve().parent

# What a fresh interpreter reports of its OpenBLAS, given the environment it starts with.
FRESH_OPENBLAS = "import numpy, threadpoolctl, json; print(json.dumps(" \
                 "[i['num_threads'] for i in threadpoolctl.threadpool_info() if i['internal_api'] == 'openblas']))"

# Read when this module is imported: a spawned worker that unpickles a function of it
# imports it before any code of the pool runs there.
OPENBLAS_VARIABLE_AT_IMPORT = os.environ.get("OPENBLAS_NUM_THREADS")


def openblas_threads():
    """The thread counts of the OpenBLAS libraries this process has loaded (numpy's at least)."""
    return [info["num_threads"] for info in threadpoolctl.threadpool_info() if info["internal_api"] == "openblas"]


def thread_report():
    return {"openblas": openblas_threads(), "env": {name: os.environ.get(name) for name in THREAD_VARIABLES},
            "pid": os.getpid()}


def record_threads(items):
    """Operation: write into each structure what its process's thread pools are."""
    report = json.dumps(thread_report())
    for atoms in items:
        atoms.info["threads"] = report
    return items


def nothing():
    """Initializer that does nothing: unpickling it imports this module in a spawned worker."""


def variable_at_import():
    return OPENBLAS_VARIABLE_AT_IMPORT


def mark_and_return(items, directory):
    """Operation: leave a file in ``directory`` (to show it ran), return the items."""
    open(os.path.join(directory, str(os.getpid())), "w").close()
    return items


def structures(n=4):
    return [Atoms("Cu", positions=[[0.0, 0.0, float(i)]]) for i in range(n)]


def reports(workers, **info):
    outputs = autoparallelize(record_threads, ConfigSet(structures()), OutputSpec(),
                              autopara_info={"num_python_subprocesses": workers,
                                             "num_inputs_per_python_subprocess": 1, **info})
    return [json.loads(atoms.info["threads"]) for atoms in outputs]


@pytest.fixture
def clean_threads(monkeypatch):
    """No thread variable and no ``WFL_LIKE_WORKER_THREADS`` in the driver's environment."""
    for name in THREAD_VARIABLES + (THREADS_ENV,):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def fresh_openblas_threads():
    """OpenBLAS's thread count in a new interpreter started with this process's environment."""
    out = subprocess.run([sys.executable, "-c", FRESH_OPENBLAS], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_each_worker_gets_its_share_of_the_cpus(clean_threads, method):
    clean_threads.setenv(START_METHOD_ENV, method)
    driver_before = openblas_threads()
    expected = max(1, available_cpus() // 2)

    seen = reports(2)

    for report in seen:
        assert report["openblas"] and set(report["openblas"]) == {expected}
        assert report["env"] == {name: str(expected) for name in THREAD_VARIABLES}
        assert report["pid"] != os.getpid()
    # the driver keeps its own libraries and environment as they were
    assert openblas_threads() == driver_before
    assert not any(name in os.environ for name in THREAD_VARIABLES)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_thread_count_set_by_the_user_leaves_every_variable_alone(clean_threads, method):
    clean_threads.setenv(START_METHOD_ENV, method)
    clean_threads.setenv("OMP_NUM_THREADS", "3")
    # a forked worker keeps the driver's libraries as they are; a spawned one loads them as
    # any new interpreter with the user's environment would
    expected_openblas = openblas_threads() if method == "fork" else fresh_openblas_threads()

    for report in reports(2):
        assert report["env"] == {name: ("3" if name == "OMP_NUM_THREADS" else None) for name in THREAD_VARIABLES}
        assert report["openblas"] == expected_openblas


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_worker_threads_variable_sets_the_count_whatever_else_is_set(clean_threads, method):
    clean_threads.setenv(START_METHOD_ENV, method)
    clean_threads.setenv("OPENBLAS_NUM_THREADS", "2")
    # more than this share of the CPUs, so that it is not what the default would give
    clean_threads.setenv(THREADS_ENV, "3")

    for report in reports(2):
        assert set(report["openblas"]) == {3}
        assert report["env"] == {name: "3" for name in THREAD_VARIABLES}
    assert os.environ["OPENBLAS_NUM_THREADS"] == "2"


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("value", ["0", "-2", "many", "1.5"])
def test_bad_worker_threads_values_are_refused_before_any_work(clean_threads, tmp_path, workers, value):
    clean_threads.setenv(THREADS_ENV, value)
    ran = tmp_path / "ran"
    ran.mkdir()
    with pytest.raises(ValueError, match=f"{THREADS_ENV}='{value}'.*whole number >= 1"):
        autoparallelize(mark_and_return, ConfigSet(structures()), OutputSpec("out.xyz", file_root=tmp_path),
                        str(ran), autopara_info={"num_python_subprocesses": workers})
    assert list(ran.iterdir()) == []
    assert not (tmp_path / "out.xyz").exists()


def test_a_serial_run_leaves_the_thread_pools_alone(clean_threads):
    before = openblas_threads()
    for report in reports(0):
        assert report["pid"] == os.getpid()
        assert report["openblas"] == before
        assert report["env"] == {name: None for name in THREAD_VARIABLES}


def test_worker_threads_variable_unused_by_a_serial_run_is_said(clean_threads):
    clean_threads.setenv(THREADS_ENV, "1")
    before = openblas_threads()
    with pytest.warns(UserWarning, match=f"{THREADS_ENV}=1 is not applied to .*record_threads: it runs serially"):
        seen = reports(0)
    assert all(report["openblas"] == before for report in seen)


def test_a_foreign_executors_workers_are_left_alone(clean_threads):
    clean_threads.setenv(THREADS_ENV, "1")
    with ProcessPoolExecutor(1, mp_context=get_context("fork")) as executor:
        with pytest.warns(UserWarning, match=f"{THREADS_ENV}=1 is not applied.*ProcessPoolExecutor"):
            seen = reports(None, executor=executor)
        untouched = executor.submit(openblas_threads).result()
    for report in seen:
        assert report["env"] == {name: None for name in THREAD_VARIABLES}
        assert report["openblas"] == untouched == openblas_threads()


def test_a_pool_made_directly_limits_only_when_asked(clean_threads):
    with WorkerPool(1) as pool:
        assert pool.submit(thread_report).result(timeout=60)["openblas"] == openblas_threads()
    with WorkerPool(1, threads=3, initializer=nothing, mp_context=get_context("spawn")) as pool:
        report = pool.submit(thread_report).result(timeout=60)
        # the spawned interpreter started with the variables: what it imported first saw them
        at_import = pool.submit(variable_at_import).result(timeout=60)
    assert set(report["openblas"]) == {3} and report["env"] == {name: "3" for name in THREAD_VARIABLES}
    assert at_import == "3"
    assert "OPENBLAS_NUM_THREADS" not in os.environ


@pytest.mark.parametrize("threads", [0, -1, 1.5, "2", True])
def test_a_pool_refuses_a_bad_thread_count(threads):
    with pytest.raises(ValueError, match=f"threads must be a whole number >= 1 or None, not {threads!r}"):
        WorkerPool(1, threads=threads)


MPI_DRIVER = textwrap.dedent("""
    import json, os, time
    from wfl_like.autoparallelize import mpipool_support
    mpipool_support.init()

    from ase import Atoms
    from wfl_like import ConfigSet, OutputSpec
    from wfl_like.autoparallelize import autoparallelize
    from wfl_like.autoparallelize.workers.threads import available_cpus
    from test_worker_threads import thread_report

    def report(items, barrier):
        # each of the two worker ranks takes one item: none ends before both have one
        open(os.path.join(barrier, str(os.getpid())), "w").close()
        deadline = time.monotonic() + 120
        while len(os.listdir(barrier)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        for atoms in items:
            atoms.info["threads"] = json.dumps(dict(thread_report(), cpus=available_cpus()))
        return items

    os.makedirs("barrier")
    out = autoparallelize(report, ConfigSet([Atoms("Cu"), Atoms("Cu")]), OutputSpec(), "barrier",
                          autopara_info={"num_inputs_per_python_subprocess": 1})
    print("RANKS", json.dumps([json.loads(a.info["threads"]) for a in out]))
    print("DRIVER", json.dumps(thread_report()))
""")


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (install the mpi extra)")
@pytest.mark.timeout(300)
def test_mpi_worker_ranks_share_their_nodes_cpus(tmp_path):
    pytest.importorskip("mpipool")
    (tmp_path / "driver.py").write_text(MPI_DRIVER)
    env = {k: v for k, v in os.environ.items()
           if k not in THREAD_VARIABLES + (THREADS_ENV, "WFL_NUM_PYTHON_SUBPROCESSES")}
    env.update(WFL_MPIPOOL="1", PATH=BIN + os.pathsep + env.get("PATH", ""),
               PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")])))
    done = subprocess.run([MPIEXEC, "-n", "3", sys.executable, "driver.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if line.startswith(("RANKS", "DRIVER")))
    ranks, driver = json.loads(lines["RANKS"]), json.loads(lines["DRIVER"])
    assert len({r["pid"] for r in ranks}) == 2 and driver["pid"] not in {r["pid"] for r in ranks}
    for report in ranks:
        # the two worker ranks share this node; rank 0, the driver, is not counted
        expected = max(1, report["cpus"] // 2)
        assert set(report["openblas"]) == {expected}
        assert report["env"] == {name: str(expected) for name in THREAD_VARIABLES}
    assert driver["env"] == {name: None for name in THREAD_VARIABLES}
