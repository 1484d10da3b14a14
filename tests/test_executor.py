"""Any concurrent.futures executor runs the chunks, with the results of a serial run."""

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest
from ase import Atoms

from wfl_like import ConfigSet, OutputSpec
from wfl_like.autoparallelize import autoparallelize
from wfl_like.errors import AutoparallelizeError


def make_list(n):
    structures = []
    for i in range(n):
        atoms = Atoms("H", positions=[[0.0, 0.0, 0.1 * i]], cell=[3, 3, 3], pbc=True)
        atoms.info["label"] = i
        structures.append(atoms)
    return structures


def draw_op(items, scale, _autopara_per_item_info=None):
    for atoms, item in zip(items, _autopara_per_item_info):
        atoms.info["draw"] = scale * item["rng"].normal()
        atoms.info["pid"] = os.getpid()
        atoms.info["init_count"] = _init_count
    return items


_init_count = 0


def count_init(marker_dir):
    global _init_count
    _init_count += 1
    with open(os.path.join(marker_dir, f"init-{os.getpid()}-{_init_count}"), "w"):
        pass


def fail_on_3_op(items):
    for atoms in items:
        if atoms.info["label"] == 3:
            raise ValueError("label 3 is refused")
    return items


def run(executor, tmp_path, chunk=2, **more):
    return list(autoparallelize(draw_op, ConfigSet(make_list(9)), OutputSpec(), 2.0, rng=np.random.default_rng(7),
                                autopara_info={"executor": executor, "num_inputs_per_python_subprocess": chunk,
                                               **more}))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_process_pool_executor_gives_the_serial_results(tmp_path, method):
    serial = list(autoparallelize(draw_op, ConfigSet(make_list(9)), OutputSpec(), 2.0, rng=np.random.default_rng(7),
                                  autopara_info={"num_python_subprocesses": 0, "num_inputs_per_python_subprocess": 4}))
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(method)) as executor:
        pooled = run(executor, tmp_path, chunk=2)
        # the executor is the caller's: still usable afterwards
        assert executor.submit(abs, -3).result() == 3
    assert [a.info["label"] for a in pooled] == list(range(9))
    assert [a.info["draw"] for a in pooled] == [a.info["draw"] for a in serial]
    assert all(a.info["pid"] != os.getpid() for a in pooled)


def test_initializer_runs_once_per_process_of_the_executor(tmp_path):
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as executor:
        result = run(executor, tmp_path, chunk=1, initializer=(count_init, [str(tmp_path)]))
    pids = {a.info["pid"] for a in result}
    markers = [p.name for p in tmp_path.iterdir() if p.name.startswith("init-")]
    assert sorted(int(m.split("-")[1]) for m in markers) == sorted(pids)     # one per process
    assert all(a.info["init_count"] == 1 for a in result)


def test_thread_pool_executor_and_failures_are_handled_as_with_our_pool(tmp_path):
    with ThreadPoolExecutor(2) as executor:
        with pytest.raises(AutoparallelizeError) as info:
            autoparallelize(fail_on_3_op, ConfigSet(make_list(6)), OutputSpec(tmp_path / "out.xyz"),
                            autopara_info={"executor": executor, "num_inputs_per_python_subprocess": 2})
        assert [f.index for f in info.value.failures] == [3]
        assert not (tmp_path / "out.xyz").exists()
        # the calling process is not marked as a worker: a later call may use worker processes
        later = autoparallelize(fail_on_3_op, ConfigSet(make_list(3)), OutputSpec(),
                                autopara_info={"num_python_subprocesses": 2})
        assert [a.info["label"] for a in later] == [0, 1, 2]


def test_journal_works_with_an_executor(tmp_path):
    out = tmp_path / "out.xyz"
    with ProcessPoolExecutor(2) as executor:
        first = autoparallelize(draw_op, ConfigSet(make_list(6)), OutputSpec(out), 1.0, rng=np.random.default_rng(3),
                                autopara_info={"executor": executor})
        content = out.read_bytes()
        out.unlink()
        again = autoparallelize(draw_op, ConfigSet(make_list(6)), OutputSpec(out), 1.0, rng=np.random.default_rng(3),
                                autopara_info={"num_python_subprocesses": 0})
    assert out.read_bytes() == content
    assert [a.info["pid"] for a in again] == [a.info["pid"] for a in first]    # rebuilt from the journal, not rerun


def test_not_an_executor_is_a_type_error():
    with pytest.raises(TypeError, match="executor"):
        autoparallelize(draw_op, make_list(2), None, 1.0, autopara_info={"executor": "dask"})


EXECUTOR_SCRIPT = '''
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from ase import Atoms
from wfl_like import ConfigSet, OutputSpec
from wfl_like.autoparallelize import autoparallelize

MODEL = None


def load_model(name):
    global MODEL
    MODEL = "model " + name


def op(items):
    for atoms in items:
        atoms.info["model"] = MODEL
    return items


if __name__ == "__main__":
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as executor:
        out = autoparallelize(op, ConfigSet([Atoms("H") for _ in range(4)]), OutputSpec(),
                              autopara_info={"executor": executor, "initializer": (load_model, ("A",))})
    print(sorted({atoms.info["model"] for atoms in out}))
'''


def test_an_initializer_and_op_of_a_script_share_its_globals_on_a_spawning_executor(tmp_path):
    # the warm-model pattern: the initializer keeps a model in a global the op reads
    import subprocess
    import sys

    (tmp_path / "script.py").write_text(EXECUTOR_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFL_")}
    done = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['model A']"
