"""One GPU per worker (``WFL_TORCH_N_GPUS``) and worker indices, tested without a GPU.

What a worker is given is what it sees in ``CUDA_VISIBLE_DEVICES`` (and what a module
it imports reads at import time), so real worker processes report it back.
"""

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from ase import Atoms

from gpu_ops import PROBE_MODULE, note_initializer, probe_task, record_device, record_nested, touch_and_return
from helpers import wait_for
from wfl_like import ConfigSet, OutputSpec
from wfl_like.autoparallelize import autoparallelize, worker_index
from wfl_like.autoparallelize.workers.devices import GPUS_ENV, VISIBLE_ENV, machine_gpu_count
from wfl_like.autoparallelize.workers.pool import START_METHOD_ENV, WorkerPool

TESTS_DIR = Path(__file__).resolve().parent


def structures(n):
    return [Atoms("Cu", positions=[[0.0, 0.0, float(i)]], info={"n": i}) for i in range(n)]


def run_recorded(tmp_path, workers, n_items=6, parties=None, **info):
    """Run :func:`record_device` over ``n_items`` structures in ``workers`` workers; the outputs."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    return list(autoparallelize(record_device, ConfigSet(structures(n_items)), OutputSpec(), str(barrier),
                                workers if parties is None else parties,
                                autopara_info={"num_python_subprocesses": workers, **info}))


@pytest.fixture
def gpus(monkeypatch):
    """Set ``WFL_TORCH_N_GPUS`` (and optionally the driver's ``CUDA_VISIBLE_DEVICES``) for one test."""
    def set_gpus(n, visible=None):
        monkeypatch.setenv(GPUS_ENV, str(n))
        if visible is None:
            monkeypatch.delenv(VISIBLE_ENV, raising=False)
        else:
            monkeypatch.setenv(VISIBLE_ENV, visible)
    return set_gpus


# three workers on a machine with fewer CPUs say so; that is not what is tested here
@pytest.mark.filterwarnings("ignore:.*worker processes were asked for")
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_each_worker_sees_the_device_of_its_index(tmp_path, monkeypatch, gpus, method):
    monkeypatch.setenv(START_METHOD_ENV, method)
    gpus(2, visible="5,7,9")
    assert PROBE_MODULE not in sys.modules      # else a forked worker would inherit the driver's import
    init_dir = tmp_path / "init"
    init_dir.mkdir()
    outputs = run_recorded(tmp_path, 3, initializer=(note_initializer, [str(init_dir)]))

    expected = {0: "5", 1: "7", 2: "5"}
    by_pid = {}
    for atoms in outputs:
        info = atoms.info
        assert info["visible"] == expected[info["index"]]
        # a module first imported in the worker read the worker's device
        assert info["probe_saw"] == info["visible"]
        by_pid.setdefault(info["pid"], set()).add(info["index"])
    # three workers (the barrier), one index each, all indices used
    assert sorted(min(indices) for indices in by_pid.values()) == [0, 1, 2]
    assert all(len(indices) == 1 for indices in by_pid.values())
    if method == "spawn":
        # the op's module is imported afresh by a spawned worker: at import it saw the device
        assert all(atoms.info["module_saw"] == atoms.info["visible"] for atoms in outputs)
    # the initializer ran after the device was set, with the worker's index
    seen = [json.loads(path.read_text()) for path in init_dir.iterdir()]
    assert sorted(s["index"] for s in seen) == [0, 1, 2]
    assert all(s["visible"] == expected[s["index"]] for s in seen)
    # the driver's own environment is as it was
    assert os.environ[VISIBLE_ENV] == "5,7,9" and worker_index() is None


@pytest.mark.skipif(machine_gpu_count() is not None and machine_gpu_count() < 2,
                    reason="this machine's NVIDIA driver lists fewer than 2 GPUs, so WFL_TORCH_N_GPUS=2 is refused")
def test_without_a_visible_list_worker_k_gets_device_k_mod_n(tmp_path, gpus):
    gpus(2)
    outputs = run_recorded(tmp_path, 2)
    assert {(atoms.info["index"], atoms.info["visible"]) for atoms in outputs} == {(0, "0"), (1, "1")}


def test_without_the_variable_workers_have_indices_and_the_drivers_devices(tmp_path, monkeypatch):
    monkeypatch.delenv(GPUS_ENV, raising=False)
    monkeypatch.setenv(VISIBLE_ENV, "3,4")
    outputs = run_recorded(tmp_path, 2)
    assert {(atoms.info["index"], atoms.info["visible"]) for atoms in outputs} == {(0, "3,4"), (1, "3,4")}


def test_a_replacement_worker_takes_the_index_and_device_of_the_dead_one(tmp_path):
    pool = WorkerPool(2, devices=["3", "4"])
    try:
        def both_workers(name):
            barrier = tmp_path / name
            barrier.mkdir()
            futures = [pool.submit(probe_task, str(barrier), 2) for _ in range(2)]
            return {r["index"]: r for r in (f.result(timeout=60) for f in futures)}

        before = both_workers("first")
        assert {i: r["visible"] for i, r in before.items()} == {0: "3", 1: "4"}
        os.kill(before[0]["pid"], signal.SIGKILL)
        assert wait_for(lambda: before[0]["pid"] not in pool.pids and len(pool.pids) == 2, timeout=30)
        after = both_workers("second")
    finally:
        pool.shutdown()
    assert {i: r["visible"] for i, r in after.items()} == {0: "3", 1: "4"}
    assert after[0]["pid"] != before[0]["pid"]          # a new process took index 0 ...
    assert after[1]["pid"] == before[1]["pid"]          # ... and the other worker kept index 1


def test_a_spawned_worker_starts_with_its_device(tmp_path):
    # a spawned child unpickles its initializer (importing its module) before any code
    # of the pool runs there: the device must be in the environment it starts with
    init_dir = tmp_path / "init"
    init_dir.mkdir()
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    pool = WorkerPool(2, initializer=note_initializer, initargs=(str(init_dir),),
                      mp_context=multiprocessing.get_context("spawn"), devices=["3", "4"])
    try:
        results = [f.result(timeout=60) for f in [pool.submit(probe_task, str(barrier), 2) for _ in range(2)]]
    finally:
        pool.shutdown()
    assert sorted((r["index"], r["visible"], r["module_saw"]) for r in results) == [(0, "3", "3"), (1, "4", "4")]


SPAWN_SCRIPT = textwrap.dedent("""
    import os
    import gpu_import_probe      # read CUDA_VISIBLE_DEVICES at import: again in each spawned worker

    _model = None

    def load_model():
        global _model
        _model = "model on " + os.environ["CUDA_VISIBLE_DEVICES"]

    def saw_at_import(items):
        for atoms in items:
            atoms.info["main_saw"] = gpu_import_probe.SEEN_AT_IMPORT
            atoms.info["model"] = str(_model)
        return items

    if __name__ == "__main__":
        from ase import Atoms
        from wfl_like import ConfigSet, OutputSpec
        from wfl_like.autoparallelize import autoparallelize
        outputs = autoparallelize(saw_at_import, ConfigSet([Atoms("Cu") for _ in range(4)]), OutputSpec(),
                                  autopara_info={"num_python_subprocesses": 2, "initializer": (load_model, [])})
        print(sorted({atoms.info["main_saw"] for atoms in outputs}), gpu_import_probe.SEEN_AT_IMPORT)
        print(sorted({atoms.info["model"] for atoms in outputs}))
""")


def test_a_spawned_worker_imports_the_main_script_with_its_device_and_shares_its_globals(tmp_path):
    (tmp_path / "script.py").write_text(SPAWN_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFL_")}
    env.update({GPUS_ENV: "1", VISIBLE_ENV: "7,8", START_METHOD_ENV: "spawn",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))})
    done = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    # the workers' imports of the main script saw their device; the driver's, its own list;
    # and the model the script's initializer kept in a global is the one its op used
    assert done.stdout.splitlines() == ["['7'] 7,8", "['model on 7']"]


def test_recycled_workers_keep_to_the_indices_of_the_pool(tmp_path, gpus):
    gpus(2, visible="0,1")
    outputs = run_recorded(tmp_path, 2, n_items=6, parties=1, max_items_per_worker=1)
    assert len({atoms.info["pid"] for atoms in outputs}) > 2         # workers were replaced ...
    for atoms in outputs:                                              # ... into the freed slots
        assert atoms.info["index"] in (0, 1)
        assert atoms.info["visible"] == str(atoms.info["index"])


@pytest.mark.parametrize("value, visible, match", [
    ("0", None, "WFL_TORCH_N_GPUS='0' is not a whole number >= 1"),
    ("abc", None, "WFL_TORCH_N_GPUS='abc' is not a whole number >= 1"),
    ("-2", None, "WFL_TORCH_N_GPUS='-2'"),
    ("1.5", None, "WFL_TORCH_N_GPUS='1.5'"),
    ("3", "0,1", "WFL_TORCH_N_GPUS=3 asks for more GPUs than CUDA_VISIBLE_DEVICES='0,1' makes visible"),
    ("1", "", "CUDA_VISIBLE_DEVICES='' makes visible \\(0\\)"),
])
def test_bad_values_are_refused_before_any_work(tmp_path, monkeypatch, value, visible, match):
    monkeypatch.setenv(GPUS_ENV, value)
    if visible is None:
        monkeypatch.delenv(VISIBLE_ENV, raising=False)
    else:
        monkeypatch.setenv(VISIBLE_ENV, visible)
    marker = tmp_path / "ran"
    with pytest.raises(ValueError, match=match):
        autoparallelize(touch_and_return, ConfigSet(structures(2)), OutputSpec(tmp_path / "out.xyz"), str(marker),
                        autopara_info={"num_python_subprocesses": 2})
    assert not marker.exists() and not (tmp_path / "out.xyz").exists()


def test_a_bad_value_is_refused_in_a_serial_run_too(tmp_path, monkeypatch):
    monkeypatch.setenv(GPUS_ENV, "two")
    marker = tmp_path / "ran"
    with pytest.raises(ValueError, match="WFL_TORCH_N_GPUS='two'"):
        autoparallelize(touch_and_return, ConfigSet(structures(2)), OutputSpec(), str(marker),
                        autopara_info={"num_python_subprocesses": 0})
    assert not marker.exists()


def test_a_serial_run_says_the_variable_is_not_applied(tmp_path, gpus):
    gpus(2, visible="6")
    with pytest.warns(UserWarning, match="WFL_TORCH_N_GPUS=2 is not applied to .*record_device: it runs serially"):
        outputs = run_recorded(tmp_path, 0, parties=1)
    assert {(atoms.info["index"], atoms.info["visible"]) for atoms in outputs} == {(-1, "6")}


def test_a_call_nested_in_a_worker_runs_on_the_workers_device(tmp_path, recwarn, gpus):
    gpus(2, visible="8,9")
    outputs = list(autoparallelize(record_nested, ConfigSet(structures(4)), OutputSpec(),
                                   autopara_info={"num_python_subprocesses": 2}))
    assert outputs and all(atoms.info["visible"] == ("8", "9")[atoms.info["index"]] for atoms in outputs)
    assert not [w for w in recwarn if GPUS_ENV in str(w.message)]


def test_an_executor_not_of_ours_is_said_to_get_no_devices(tmp_path, gpus):
    gpus(1, visible="2")
    with ProcessPoolExecutor(1) as executor:
        with pytest.warns(UserWarning, match="WFL_TORCH_N_GPUS=1 is not applied .*executor ProcessPoolExecutor"):
            outputs = run_recorded(tmp_path, None, n_items=2, parties=1, executor=executor)
    assert {(atoms.info["index"], atoms.info["visible"]) for atoms in outputs} == {(-1, "2")}


# --- MPI ------------------------------------------------------------------------------

MPI_DRIVER = textwrap.dedent("""
    import os, sys
    from wfl_like.autoparallelize import mpipool_support, worker_index
    mpipool_support.init()

    from ase import Atoms
    from wfl_like import ConfigSet, OutputSpec
    from wfl_like.autoparallelize import autoparallelize
    from gpu_ops import record_device

    executor = mpipool_support.active_executor()
    os.makedirs("barrier")
    outputs = autoparallelize(record_device, ConfigSet([Atoms("Cu") for _ in range(4)]), OutputSpec(), "barrier",
                              executor.size)
    for atoms in outputs:
        print("item", atoms.info["index"], atoms.info["visible"], atoms.info["probe_saw"], atoms.info["pid"])
    print("driver", worker_index(), os.environ["CUDA_VISIBLE_DEVICES"])
""")


def test_mpi_worker_rank_r_is_worker_r_minus_1_with_its_device(tmp_path):
    pytest.importorskip("mpi4py")
    pytest.importorskip("mpipool")
    bin_dir = os.path.dirname(sys.executable)
    mpiexec = shutil.which("mpiexec", path=bin_dir + os.pathsep + os.environ.get("PATH", ""))
    if mpiexec is None:
        pytest.skip("no mpiexec (install the mpi extra)")
    (tmp_path / "driver.py").write_text(MPI_DRIVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFL_")}
    env.update({"WFL_MPIPOOL": "1", GPUS_ENV: "2", VISIBLE_ENV: "4,6",
                "PATH": bin_dir + os.pathsep + env.get("PATH", ""),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))})
    done = subprocess.run([mpiexec, "-n", "3", sys.executable, "driver.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    items = [line.split()[1:] for line in done.stdout.splitlines() if line.startswith("item")]
    assert len(items) == 4
    assert {(index, visible, probe) for index, visible, probe, _ in items} == {("0", "4", "4"), ("1", "6", "6")}
    assert "driver None 4,6" in done.stdout


def test_the_device_check_runs_or_says_there_is_no_cuda(tmp_path):
    script = TESTS_DIR.parent / "benchmarks" / "gpu_check.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFL_")}
    done = subprocess.run([sys.executable, str(script), "--n", "4", "--atoms", "8"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no CUDA here" in done.stdout or "OK: " in done.stdout
