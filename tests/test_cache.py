"""Exact caching and resume (issue 4): the journal beside the outputs, for real.

Operations count their work with marker files: one file per item computed, named after
the item's label and a uuid, in a directory the operation takes as an argument.  Runs
that must be killed are driver scripts written to ``tmp_path`` and started in their own
session, so that their process group holds the driver and its workers and nothing else.
No mocks, no timing assertions (waits poll for a condition, with a generous limit).
"""

import functools
import importlib
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from collections import Counter
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms

from helpers import driver_env, end_process_group, group_exists, listing, wait_for, wait_for_release, waiting_at
from wfl_like import AutoparaInfo, ConfigSet, OutputSpec
from wfl_like.autoparallelize import autoparallelize
from wfl_like.autoparallelize.resume.fingerprint import fingerprint
from wfl_like.autoparallelize.resume.journal import Journal, journal_path
from wfl_like.autoparallelize.supervisor import IN_FLIGHT_PER_SLOT
from wfl_like.cli import main as cli_main
from wfl_like.manifest import read_manifest
from wfl_like.errors import AutoparallelizeError, FailedItemsWarning, OutputLockedError

TESTS_DIR = Path(__file__).resolve().parent
EXAMPLE = TESTS_DIR.parent / "examples" / "data" / "cu_rattled.xyz"
N_ITEMS = 10


# --- operations (module level: forked workers inherit them) ----------------------------------

def mark(markers, label):
    """Record that the item ``label`` was computed once more."""
    Path(markers, f"{label}-{uuid.uuid4().hex}").touch()


def marking_op(atoms_list, markers, scale=1.0, sleep=0.0, _autopara_per_item_info=None):
    """Marks each item, stores a value from its positions, and a draw when given an rng."""
    outputs = []
    for atoms, info in zip(atoms_list, _autopara_per_item_info):
        mark(markers, atoms.info["label"])
        time.sleep(sleep)
        atoms.info["value"] = scale * float(atoms.positions.sum())
        atoms.info["item_i"] = info["item_i"]
        if "rng" in info:
            atoms.info["draw"] = float(info["rng"].random())
        outputs.append(atoms)
    return outputs


def gated_marking_op(atoms_list, markers, release, gate, _autopara_per_item_info=None):
    """``marking_op``, but the items labelled ``gate`` or more wait for the file ``release``."""
    for atoms in atoms_list:
        if atoms.info["label"] >= gate:
            wait_for_release(release, atoms.info["label"])
    return marking_op(atoms_list, markers, _autopara_per_item_info=_autopara_per_item_info)


def failing_op(atoms_list, markers, control):
    """Fails on the items whose labels are listed, one per line, in the ``control`` file."""
    bad = {int(line) for line in Path(control).read_text().split()}
    outputs = []
    for atoms in atoms_list:
        label = int(atoms.info["label"])
        mark(markers, label)
        if label in bad:
            raise ValueError(f"item {label} is listed in the control file")
        atoms.info["value"] = float(atoms.positions.sum())
        outputs.append(atoms)
    return outputs


# --- helpers ---------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _no_worker_env(monkeypatch):
    monkeypatch.delenv("WFL_NUM_PYTHON_SUBPROCESSES", raising=False)
    monkeypatch.delenv("WFL_LIKE_START_METHOD", raising=False)


def computed(markers):
    """How many times each label was computed: ``Counter({label: n})``."""
    return Counter(int(p.name.split("-")[0]) for p in Path(markers).iterdir())


def structures(n=N_ITEMS, seed=0):
    rng = np.random.default_rng(seed)
    return [Atoms("Cu2", positions=rng.random((2, 3)) * 3, cell=[4, 4, 4], pbc=True, info={"label": i})
            for i in range(n)]


def write_input(path, n=N_ITEMS, changed=()):
    """An input file of ``n`` structures; those labelled in ``changed`` are moved a little."""
    configs = structures(n)
    for label in changed:
        configs[label].positions[0] += 0.01
    ase.io.write(path, configs, format="extxyz")
    return path


def para(nproc=0, chunk=1, **more):
    return AutoparaInfo(num_python_subprocesses=nproc, num_inputs_per_python_subprocess=chunk, **more)


def expected(inputs, factor=1.0):
    """``(label, value)`` of each structure of the input file, as the ops compute them."""
    return [(int(a.info["label"]), factor * float(a.positions.sum())) for a in ase.io.read(inputs, ":")]


def labels_and_values(path):
    return [(int(a.info["label"]), a.info["value"]) for a in ase.io.read(path, ":")]


def journaled(out):
    """How many items the journal of ``out`` holds as done, read as ``wfl-like status`` reads it
    (0 while there is no journal yet, or its writer holds it for a moment)."""
    path = journal_path(out)
    if not path.exists():
        return 0
    try:
        with Journal(path, read_only=True) as journal:
            return journal.counts()["done"]
    except sqlite3.OperationalError:
        return 0


class Driver:
    """A script run in its own session; ``kill()`` SIGKILLs the driver alone."""

    def __init__(self, script, args, cwd, env=None):
        self.stderr_path = Path(cwd) / f"stderr-{uuid.uuid4().hex}.txt"
        with open(self.stderr_path, "w") as stderr:
            self.proc = subprocess.Popen([str(a) for a in [*script, *args]], cwd=cwd, env=env or driver_env(),
                                         stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        self.pgid = self.proc.pid

    def stderr(self):
        return self.stderr_path.read_text()

    def wait(self, timeout=120):
        returncode = self.proc.wait(timeout=timeout)
        assert returncode == 0, self.stderr()
        return self

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL
        # workers die with their driver (PR_SET_PDEATHSIG): nothing of the run is left
        assert wait_for(lambda: not group_exists(self.pgid), 60), "workers outlived their killed driver"

    def cleanup(self):
        end_process_group(self.proc)


@pytest.fixture
def drivers():
    started = []

    def start(*args, **kwargs):
        driver = Driver(*args, **kwargs)
        started.append(driver)
        return driver

    yield start
    for driver in started:
        driver.cleanup()


# --- 1. a run killed with SIGKILL resumes where it stopped -----------------------------------

N_KILL = 40
KILL_WORKERS, KILL_CHUNK = 2, 2
# Items from KILL_GATE on wait for a release file that the killed run never sees, so it is
# killed with exactly the items before the gate journaled, however slowly it is scheduled.
KILL_GATE = 20

KILL_DRIVER = textwrap.dedent(f"""
    import os, sys, uuid
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    from ase import Atoms
    from helpers import wait_for_release
    from wfl_like import OutputSpec
    from wfl_like.autoparallelize import autoparallelize

    def op(items, markers, release, _autopara_per_item_info):
        for atoms, info in zip(items, _autopara_per_item_info):
            open(os.path.join(markers, f"{{atoms.info['label']}}-{{uuid.uuid4().hex}}"), "w").close()
            if info["item_i"] >= {KILL_GATE}:
                wait_for_release(release, atoms.info["label"])
            atoms.info["draw"] = info["rng"].random()
            atoms.info["item_i"] = info["item_i"]
        return items

    if __name__ == "__main__":
        markers, out, release = sys.argv[2:5]
        gen = np.random.default_rng(0)
        inputs = [Atoms("Cu2", positions=gen.random((2, 3)) * 3, cell=[4, 4, 4], pbc=True, info={{"label": i}})
                  for i in range({N_KILL})]
        autoparallelize(op, inputs, OutputSpec(out), markers, release, rng=np.random.default_rng(7),
                        autopara_info={{"num_python_subprocesses": {KILL_WORKERS},
                                        "num_inputs_per_python_subprocess": {KILL_CHUNK}}})
""")


@pytest.mark.timeout(900)
def test_sigkilled_run_resumes_computing_only_what_was_not_journaled(tmp_path, drivers):
    script = tmp_path / "driver.py"
    script.write_text(KILL_DRIVER)
    command = [sys.executable, script, TESTS_DIR]
    # the same path in every run: it is an argument of the op, so part of the cache key
    release = tmp_path / "release"
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    for directory in (ref_dir, run_dir):
        (directory / "markers").mkdir(parents=True)

    markers, out = run_dir / "markers", run_dir / "out.xyz"
    killed = drivers(command, [markers, out, release], cwd=run_dir)
    # each worker holds a chunk from the gate on, having started (marked) its first item;
    # the chunks before the gate are all back and journaled, in order
    assert wait_for(lambda: len(waiting_at(release)) == KILL_WORKERS or killed.proc.poll() is not None, 240)
    assert wait_for(lambda: journaled(out) >= KILL_GATE or killed.proc.poll() is not None, 240)
    assert killed.proc.poll() is None, f"the driver ended before it was killed:\n{killed.stderr()}"
    killed.kill()
    started_before = computed(markers)
    assert not out.exists()
    journaled_before = journaled(out)
    assert journaled_before == KILL_GATE
    # the work the kill lost: the items the workers had started, at most the chunks in flight
    lost = sum(started_before.values()) - journaled_before
    assert lost == KILL_WORKERS
    assert lost <= IN_FLIGHT_PER_SLOT * KILL_WORKERS * KILL_CHUNK
    assert set(started_before) == set(range(KILL_GATE)) | {int(label) for label in waiting_at(release)}

    release.touch()
    # the reference: an uninterrupted run in a directory of its own
    drivers(command, [ref_dir / "markers", ref_dir / "out.xyz", release], cwd=ref_dir).wait()
    assert sum(computed(ref_dir / "markers").values()) == N_KILL

    drivers(command, [markers, out, release], cwd=run_dir).wait()
    assert not group_exists(killed.pgid)
    counts = computed(markers)
    # the rerun computed exactly the items not journaled: the lost ones a second time
    assert set(counts) == set(range(N_KILL))
    assert sum(counts.values()) - sum(started_before.values()) == N_KILL - journaled_before
    assert {label for label, n in counts.items() if n == 2} == set(started_before) - set(range(KILL_GATE))
    assert sum(counts.values()) == N_KILL + lost
    # ... and wrote exactly what an uninterrupted run writes
    assert out.read_bytes() == (ref_dir / "out.xyz").read_bytes()
    assert listing(run_dir) == sorted(["markers", "out.xyz", *[p.name for p in run_dir.glob("stderr-*")]])


# --- 2. the cache key, row by row ----------------------------------------------------------

@pytest.fixture
def setup(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    return write_input(tmp_path / "in.xyz"), tmp_path / "out.xyz", markers


def test_nothing_changed_returns_existing_outputs_without_running_or_rewriting(setup, caplog):
    inputs, out, markers = setup
    autoparallelize(marking_op, ConfigSet(inputs), OutputSpec(out), markers, autopara_info=para(2, 3))
    before = out.stat()
    caplog.set_level(logging.INFO, logger="wfl_like")

    result = autoparallelize(marking_op, ConfigSet(inputs), OutputSpec(out), markers, autopara_info=para(2, 3))

    assert sum(computed(markers).values()) == N_ITEMS
    assert result.one_file() == out
    after = out.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    assert "nothing changed" in caplog.text
    assert [int(a.info["label"]) for a in result] == list(range(N_ITEMS))


def test_changed_argument_recomputes_every_item_and_says_why(setup, caplog):
    inputs, out, markers = setup
    autoparallelize(marking_op, ConfigSet(inputs), OutputSpec(out), markers, scale=1.0, autopara_info=para())
    caplog.set_level(logging.INFO, logger="wfl_like.cache")

    autoparallelize(marking_op, ConfigSet(inputs), OutputSpec(out), markers, scale=2.0, autopara_info=para())

    assert computed(markers) == Counter({label: 2 for label in range(N_ITEMS)})
    assert labels_and_values(out) == expected(inputs, 2.0)
    messages = [r.getMessage() for r in caplog.records if r.name == "wfl_like.cache"]
    assert any("recomputing every item" in m and "arguments changed" in m for m in messages), messages


OP_MODULE = """
def helper(atoms):
    return {helper_scale} * float(atoms.positions.sum())

def op(atoms_list, markers):
    from test_cache import mark
    for atoms in atoms_list:
        mark(markers, atoms.info["label"])
        atoms.info["value"] = {op_scale} * helper(atoms)
    return atoms_list
"""


@pytest.fixture
def module_in(tmp_path, monkeypatch):
    """Write a module into ``tmp_path`` and import it (again, after rewriting it)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names = []

    def write_and_import(name, text):
        path = tmp_path / f"{name}.py"
        path.write_text(text)
        # a rewrite in the same second with the same size would be read from a stale .pyc
        shutil.rmtree(tmp_path / "__pycache__", ignore_errors=True)
        importlib.invalidate_caches()
        if name in sys.modules:
            return importlib.reload(sys.modules[name])
        names.append(name)
        return importlib.import_module(name)

    yield write_and_import
    for name in names:
        sys.modules.pop(name, None)


def test_changed_op_code_recomputes_every_item(setup, module_in, caplog):
    inputs, out, markers = setup
    caplog.set_level(logging.INFO, logger="wfl_like.cache")
    versions = [dict(helper_scale=1.0, op_scale=1.0),
                dict(helper_scale=1.0, op_scale=3.0),     # the op's own code changed
                dict(helper_scale=5.0, op_scale=3.0)]     # only a helper it calls changed
    for n_runs, scales in enumerate(versions, start=1):
        module = module_in("code_change_ops", OP_MODULE.format(**scales))
        caplog.clear()
        autoparallelize(module.op, ConfigSet(inputs), OutputSpec(out), markers, autopara_info=para(2, 2))
        assert computed(markers) == Counter({label: n_runs for label in range(N_ITEMS)})
        assert labels_and_values(out) == [(label, scales["op_scale"] * (scales["helper_scale"] * value))
                                          for label, value in expected(inputs)]
        if n_runs > 1:
            assert "code or its arguments changed" in caplog.text

    # and the same code again: nothing to do
    module_in("code_change_ops", OP_MODULE.format(**versions[-1]))
    autoparallelize(module.op, ConfigSet(inputs), OutputSpec(out), markers, autopara_info=para(2, 2))
    assert sum(computed(markers).values()) == len(versions) * N_ITEMS


def test_changed_code_of_a_function_wrapped_in_partial_recomputes_every_item(setup, module_in):
    inputs, out, markers = setup
    for n_runs, op_scale in enumerate((1.0, 3.0, 3.0), start=1):
        module = module_in("partial_ops", OP_MODULE.format(helper_scale=1.0, op_scale=op_scale))
        op = functools.partial(module.op, markers=str(markers))
        autoparallelize(op, ConfigSet(inputs), OutputSpec(out), autopara_info=para())
        # computed again after the code changed (second run), not after it stayed (third)
        assert computed(markers) == Counter({label: min(n_runs, 2) for label in range(N_ITEMS)})
        assert labels_and_values(out) == [(label, op_scale * value) for label, value in expected(inputs)]


def test_changed_input_structures_recompute_only_those(setup, tmp_path, caplog):
    inputs, out, markers = setup
    rng = np.random.default_rng(3)
    autoparallelize(marking_op, ConfigSet(inputs), OutputSpec(out), markers, rng=rng, autopara_info=para(2, 2))
    changed = (1, 4, 8)
    write_input(inputs, changed=changed)
    caplog.set_level(logging.INFO, logger="wfl_like.cache")

    autoparallelize(marking_op, ConfigSet(inputs), OutputSpec(out), markers, rng=np.random.default_rng(3),
                    autopara_info=para(2, 2))

    assert computed(markers) == Counter({label: 2 if label in changed else 1 for label in range(N_ITEMS)})
    assert "7 items reused from the journal, 3 computed; 3 items changed" in caplog.text
    # what a fresh run over the new input writes
    fresh = tmp_path / "fresh"
    (fresh / "markers").mkdir(parents=True)
    autoparallelize(marking_op, ConfigSet(inputs), OutputSpec(fresh / "out.xyz"), fresh / "markers",
                    rng=np.random.default_rng(3), autopara_info=para())
    assert out.read_bytes() == (fresh / "out.xyz").read_bytes()


def test_only_how_the_work_is_spread_changed_recomputes_nothing(setup, caplog):
    inputs, out, markers = setup
    autoparallelize(marking_op, ConfigSet(inputs), OutputSpec(out), markers, rng=np.random.default_rng(5),
                    autopara_info=para(0, 1))
    reference = out.read_bytes()
    caplog.set_level(logging.INFO, logger="wfl_like.cache")

    autoparallelize(marking_op, ConfigSet(inputs), OutputSpec(out), markers, rng=np.random.default_rng(5),
                    autopara_info=para(2, 3, retries=0, timeout=60))
    assert sum(computed(markers).values()) == N_ITEMS

    # without the output file, every item is looked up in the journal: its key must not
    # depend on the process count, chunk size, retries or timeout either
    out.unlink()
    autoparallelize(marking_op, ConfigSet(inputs), OutputSpec(out), markers, rng=np.random.default_rng(5),
                    autopara_info=para(1, 4, retries=5, timeout=30))
    assert sum(computed(markers).values()) == N_ITEMS
    assert out.read_bytes() == reference
    assert f"{N_ITEMS} items reused from the journal, 0 computed" in caplog.text


# --- 3. failed items are not cached ----------------------------------------------------------

FAILING = (2, 5, 7)


@pytest.fixture
def control(tmp_path):
    path = tmp_path / "control.txt"
    path.write_text("".join(f"{label}\n" for label in FAILING))
    return path


def test_rerun_after_skipped_failures_computes_only_the_failed_items(setup, control):
    inputs, out, markers = setup
    with pytest.warns(FailedItemsWarning):
        first = autoparallelize(failing_op, ConfigSet(inputs), OutputSpec(out), markers, control,
                                autopara_info=para(2, 1, errors="skip"))
    assert sorted(f.index for f in first.failures) == list(FAILING)
    assert [label for label, _ in labels_and_values(out)] == [i for i in range(N_ITEMS) if i not in FAILING]

    control.write_text("")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = autoparallelize(failing_op, ConfigSet(inputs), OutputSpec(out), markers, control,
                                 autopara_info=para(2, 1, errors="skip"))

    assert computed(markers) == Counter({label: 2 if label in FAILING else 1 for label in range(N_ITEMS)})
    assert second.failures == []
    assert labels_and_values(out) == expected(inputs)


def test_rerun_after_raised_failures_computes_only_the_failed_items(setup, control):
    inputs, out, markers = setup
    with pytest.raises(AutoparallelizeError):
        autoparallelize(failing_op, ConfigSet(inputs), OutputSpec(out), markers, control,
                        autopara_info=para(2, 1, errors="raise"))
    assert listing(out.parent) == ["control.txt", "in.xyz", "markers"]

    control.write_text("")
    autoparallelize(failing_op, ConfigSet(inputs), OutputSpec(out), markers, control,
                    autopara_info=para(2, 1, errors="raise"))

    assert computed(markers) == Counter({label: 2 if label in FAILING else 1 for label in range(N_ITEMS)})
    assert labels_and_values(out) == expected(inputs)


# --- 4. overwrite, cache=False, outputs without a journal ------------------------------------

def test_overwrite_recomputes_everything(setup):
    inputs, out, markers = setup
    autoparallelize(marking_op, ConfigSet(inputs), OutputSpec(out), markers, autopara_info=para())
    autoparallelize(marking_op, ConfigSet(inputs), OutputSpec(out, overwrite=True), markers, autopara_info=para())
    assert computed(markers) == Counter({label: 2 for label in range(N_ITEMS)})
    # the journal now describes the new output: a plain rerun reuses it
    autoparallelize(marking_op, ConfigSet(inputs), OutputSpec(out), markers, autopara_info=para())
    assert sum(computed(markers).values()) == 2 * N_ITEMS


def test_cache_false_keeps_no_journal_and_reuses_outputs_as_wfl_does(setup):
    inputs, out, markers = setup
    autoparallelize(marking_op, ConfigSet(inputs), OutputSpec(out), markers, autopara_info=para(cache=False))
    # no journal: only the manifest beside the output, which says what made it
    assert sorted(os.listdir(out.parent)) == ["in.xyz", "markers", "out.xyz", "out.xyz.manifest.json"]
    written = out.read_bytes()

    # reused as it is, even with another argument: the cache is off
    result = autoparallelize(marking_op, ConfigSet(inputs), OutputSpec(out), markers, scale=2.0,
                             autopara_info=para(cache=False))
    assert sum(computed(markers).values()) == N_ITEMS
    assert result.one_file() == out and out.read_bytes() == written
    assert sorted(os.listdir(out.parent)) == ["in.xyz", "markers", "out.xyz", "out.xyz.manifest.json"]


def test_outputs_without_a_journal_are_reused_with_a_warning(setup):
    inputs, out, markers = setup
    foreign = structures(3)
    ase.io.write(out, foreign, format="extxyz")
    written = out.read_bytes()
    for _ in range(2):       # and again: the first reuse does not make them ours to replace
        with pytest.warns(UserWarning, match="could not be checked"):
            result = autoparallelize(marking_op, ConfigSet(inputs), OutputSpec(out), markers, autopara_info=para())
        assert not any(markers.iterdir())
        assert out.read_bytes() == written
        assert [int(a.info["label"]) for a in result] == [0, 1, 2]
    # overwrite=True does replace them
    autoparallelize(marking_op, ConfigSet(inputs), OutputSpec(out, overwrite=True), markers, autopara_info=para())
    assert sum(computed(markers).values()) == N_ITEMS
    assert len(ase.io.read(out, ":")) == N_ITEMS


# --- 5. one writer per output ----------------------------------------------------------------

LOCK_DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from test_cache import gated_marking_op, para
    from wfl_like import ConfigSet, OutputSpec
    from wfl_like.autoparallelize import autoparallelize

    inputs, out, markers, release, gate = sys.argv[2:7]
    autoparallelize(gated_marking_op, ConfigSet(inputs), OutputSpec(out), markers, release, int(gate),
                    autopara_info=para())
""")
# the first run holds the lock, waiting at the gate, until the test has made its checks
LOCK_GATE = N_ITEMS // 2


@pytest.mark.timeout(600)
def test_second_run_on_a_locked_output_fails_naming_it_and_the_holder(setup, tmp_path, drivers, capsys,
                                                                      monkeypatch):
    inputs, out, markers = setup
    release = tmp_path / "release"
    # the same arguments in every call here, as a rerun of the same call would pass them
    call_args = (str(markers), str(release), LOCK_GATE)
    script = tmp_path / "driver.py"
    script.write_text(LOCK_DRIVER)
    first = drivers([sys.executable, script], [TESTS_DIR, inputs, out, *call_args], cwd=tmp_path)
    assert wait_for(lambda: waiting_at(release) or first.proc.poll() is not None, 240)
    assert first.proc.poll() is None, first.stderr()
    assert sum(computed(markers).values()) == LOCK_GATE

    with pytest.raises(OutputLockedError) as error:
        autoparallelize(gated_marking_op, ConfigSet(inputs), OutputSpec(out), *call_args, autopara_info=para())
    message = str(error.value)
    assert str(out) in message and f"process {first.proc.pid} on {socket.gethostname()}" in message

    # status reads the journal of a run in progress without taking the lock (the command
    # line replaces warnings.showwarning: put it back after the test)
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    assert cli_main(["status", str(out)]) == 0
    assert "not complete" in capsys.readouterr().out
    assert first.proc.poll() is None, first.stderr()

    release.touch()
    first.wait(timeout=300)
    # the refused run changed nothing: every item computed once, by the first run, and written
    assert computed(markers) == Counter({label: 1 for label in range(N_ITEMS)})
    assert labels_and_values(out) == expected(inputs)
    # the lock is gone with its holder; the same call now finds everything done
    result = autoparallelize(gated_marking_op, ConfigSet(inputs), OutputSpec(out), *call_args,
                             autopara_info=para())
    assert sum(computed(markers).values()) == N_ITEMS
    assert len(list(result)) == N_ITEMS


def test_journal_held_in_this_process_locks_the_output_until_released(setup):
    inputs, out, markers = setup
    holder = Journal(journal_path(out))
    try:
        holder.set_meta(pid=os.getpid(), host=socket.gethostname())
        with pytest.raises(OutputLockedError, match=f"{out.name}.*process {os.getpid()}"):
            autoparallelize(marking_op, ConfigSet(inputs), OutputSpec(out), markers, autopara_info=para())
        assert not out.exists() and not any(markers.iterdir())
    finally:
        holder.close()
    autoparallelize(marking_op, ConfigSet(inputs), OutputSpec(out), markers, autopara_info=para())
    assert len(ase.io.read(out, ":")) == N_ITEMS


# --- 6. outputs in memory ------------------------------------------------------------------

def in_memory_summary(configset):
    return [(a.info["label"], a.info["value"], a.info["draw"], a.positions.tolist()) for a in configset]


def test_outputs_in_memory_have_no_journal_unless_given_a_location(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    markers = tmp_path / "markers"
    markers.mkdir()

    def run(**info):
        return autoparallelize(marking_op, structures(), OutputSpec(), markers, rng=np.random.default_rng(2),
                               autopara_info=para(2, 2, **info))

    run()
    run()
    assert sum(computed(markers).values()) == 2 * N_ITEMS
    assert os.listdir(tmp_path) == ["markers"]       # nothing written to disk

    cache = tmp_path / "j.sqlite"
    first = in_memory_summary(run(cache=str(cache)))
    assert cache.exists()
    second = in_memory_summary(run(cache=str(cache)))
    assert sum(computed(markers).values()) == 3 * N_ITEMS
    assert second == first
    assert [row[0] for row in first] == list(range(N_ITEMS))


# --- 7. cache keys are the same in every process and under every hash seed ----------------------

FINGERPRINT_SCRIPT = textwrap.dedent("""
    import json
    from pathlib import Path
    import numpy as np
    from ase import Atoms
    from ase.calculators.emt import EMT
    from wfl_like.autoparallelize.resume.fingerprint import fingerprint

    atoms = Atoms("CuAu", positions=[[0, 0, 0], [1.1, 0.2, 2.0]], cell=[3, 3, 3], pbc=[True, True, False])
    atoms.info.update(config_type="bulk", params={"b": 1, "a": [1, 2.5], "c": {"z": None, "y": (1, "x")}},
                      tags={"alpha", "beta", "gamma", "delta", 7}, frozen=frozenset({"p", "q", "r"}))
    atoms.arrays["weights"] = np.array([0.5, 1.5])
    spec = (EMT, (), {"asap_cutoff": False})
    rng = np.random.default_rng(12345).spawn(3)[2]
    path = Path("/some/where/data")
    hash(path), str(path)       # caches a hash (seeded) inside the path object
    print(json.dumps({"atoms": fingerprint(atoms), "spec": fingerprint(spec), "rng": fingerprint(rng),
                      "path": fingerprint(path), "all": fingerprint(atoms, spec, rng, path)}))
""")


def test_fingerprints_are_the_same_under_other_hash_seeds_and_processes(tmp_path):
    script = tmp_path / "fingerprints.py"
    script.write_text(FINGERPRINT_SCRIPT)
    procs = [subprocess.Popen([sys.executable, str(script)], env=driver_env(PYTHONHASHSEED=seed),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in ("1", "2")]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        results.append(json.loads(stdout))
    assert results[0] == results[1]
    assert len(set(results[0].values())) == len(results[0])
    # and in this process (whatever its seed), for values built in another order
    from ase.calculators.emt import EMT
    atoms = Atoms("CuAu", positions=[[0, 0, 0], [1.1, 0.2, 2.0]], cell=[3, 3, 3], pbc=[True, True, False])
    atoms.info.update(frozen=frozenset({"r", "q", "p"}), tags={7, "delta", "gamma", "beta", "alpha"},
                      params={"c": {"y": (1, "x"), "z": None}, "a": [1, 2.5], "b": 1}, config_type="bulk")
    atoms.arrays["weights"] = np.array([0.5, 1.5])
    assert fingerprint(atoms) == results[0]["atoms"]
    assert fingerprint((EMT, (), {"asap_cutoff": False})) == results[0]["spec"]
    assert fingerprint(np.random.default_rng(12345).spawn(3)[2]) == results[0]["rng"]
    assert fingerprint(Path("/some/where/data")) == results[0]["path"]


SEED_DRIVER = textwrap.dedent("""
    import sys, uuid
    from pathlib import Path
    import numpy as np
    from ase import Atoms
    from wfl_like import OutputSpec
    from wfl_like.autoparallelize import autoparallelize

    def op(items, markers, tags, options, _autopara_per_item_info):
        outputs = []
        for atoms, info in zip(items, _autopara_per_item_info):
            label = atoms.info["label"]
            (markers / f"{label}-{uuid.uuid4().hex}").touch()
            outputs.append(Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc,
                                 info={"label": label, "n": len(tags) + len(options), "draw": info["rng"].random()}))
        return outputs

    if __name__ == "__main__":
        markers, out = Path(sys.argv[1]), sys.argv[2]
        gen = np.random.default_rng(0)
        inputs = [Atoms("Cu2", positions=gen.random((2, 3)) * 3, cell=[4, 4, 4], pbc=True,
                        info={"label": i, "meta": {"kind": "test", "ids": {"a", "b", "c", i}},
                              "names": {"x", "yy", "zzz"}})
                  for i in range(8)]
        autoparallelize(op, inputs, OutputSpec(out), markers, {"red", "green", "blue"}, {"k": 1, "j": [2, 3]},
                        rng=np.random.default_rng(11),
                        autopara_info={"num_python_subprocesses": 2, "num_inputs_per_python_subprocess": 3})
""")


@pytest.mark.timeout(300)
def test_rerun_under_another_hash_seed_reuses_everything(tmp_path, drivers):
    script = tmp_path / "driver.py"
    script.write_text(SEED_DRIVER)
    markers, out = tmp_path / "markers", tmp_path / "out.xyz"
    markers.mkdir()
    drivers([sys.executable, script], [markers, out], cwd=tmp_path, env=driver_env(PYTHONHASHSEED="1")).wait()
    assert sum(computed(markers).values()) == 8
    written = out.read_bytes()
    # the inputs are in memory, so every item is looked up by its key (no whole-file shortcut)
    second = drivers([sys.executable, script], [markers, out], cwd=tmp_path,
                     env=driver_env(PYTHONHASHSEED="2")).wait()
    assert sum(computed(markers).values()) == 8, second.stderr()
    assert out.read_bytes() == written


# --- 8. the command line ---------------------------------------------------------------------

def wfl_like_command():
    beside = Path(sys.executable).parent / "wfl-like"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "wfl_like.cli"]


def run_cli(*args, cwd, env=None):
    return subprocess.run(wfl_like_command() + [str(a) for a in args], cwd=cwd, env=env or driver_env(),
                          capture_output=True, text=True, timeout=120)


N_COPIES = 10      # 400 structures
CLI_WORKERS, CLI_CHUNK = 2, 4
CLI_GATE = 200     # structures from here on wait for the release file

GATED_CALCULATOR = textwrap.dedent("""
    from ase.calculators.emt import EMT
    from helpers import wait_for_release


    class GatedEMT(EMT):
        \"\"\"EMT; structures whose info["item"] is ``gate`` or more wait for the file ``release``.\"\"\"

        default_parameters = {**EMT.default_parameters, "release": None, "gate": None}

        def calculate(self, atoms=None, *args, **kwargs):
            item = (atoms if atoms is not None else self.atoms).info["item"]
            if item >= self.parameters.gate:
                wait_for_release(self.parameters.release, item)
            super().calculate(atoms, *args, **kwargs)
""")


# above the sum of its waits and command timeouts
@pytest.mark.timeout(1200)
def test_cli_calculate_killed_and_rerun_writes_what_an_uninterrupted_run_writes(tmp_path, drivers):
    # every structure numbered, for the gate: the example repeated N_COPIES times
    configs = ase.io.read(EXAMPLE, ":") * N_COPIES
    n_structures = len(configs)
    for i, atoms in enumerate(configs):
        atoms = configs[i] = atoms.copy()
        atoms.info["item"] = i
    big = tmp_path / "big.xyz"
    ase.io.write(big, configs, format="extxyz")
    (tmp_path / "gated_calc.py").write_text(GATED_CALCULATOR)
    env = driver_env(PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), str(TESTS_DIR),
                                                              os.environ.get("PYTHONPATH")])))
    # one release path for every run: the calculator's arguments are part of the cache key
    release = tmp_path / "release"
    calculate = ["calculate", big, "-o", "out.xyz", "-n", CLI_WORKERS, "--chunk-size", CLI_CHUNK,
                 "-c", "gated_calc:GatedEMT", "-k", f"release={release}", "-k", f"gate={CLI_GATE}"]
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref_dir.mkdir(), run_dir.mkdir()

    killed = drivers(wfl_like_command(), calculate, cwd=run_dir, env=env)
    # both workers hold a chunk from the gate on; every chunk before it is back and journaled
    assert wait_for(lambda: len(waiting_at(release)) == CLI_WORKERS or killed.proc.poll() is not None, 240)
    assert wait_for(lambda: journaled(run_dir / "out.xyz") >= CLI_GATE or killed.proc.poll() is not None, 240)
    assert killed.proc.poll() is None, f"the run ended before it was killed:\n{killed.stderr()}"
    killed.kill()
    assert not (run_dir / "out.xyz").exists()

    status = run_cli("status", "out.xyz", cwd=run_dir, env=env)
    assert status.returncode == 0, status.stderr
    done = int(status.stdout.split("items:")[1].split()[0])
    assert done == CLI_GATE
    assert "not complete" in status.stdout and "0 failed" in status.stdout
    # the items line of a killed run reads as a sentence (it once ended "... its end pending")
    (items_line,) = [line for line in status.stdout.splitlines() if line.startswith("items:")]
    assert items_line.endswith("0 failed (the rest unknown: the run did not reach the end of its input)")

    release.touch()
    reference = run_cli(*calculate, cwd=ref_dir, env=env)
    assert reference.returncode == 0, reference.stderr

    rerun = run_cli(*calculate, cwd=run_dir, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done} items reused from the journal, {n_structures - done} computed" in rerun.stderr
    assert (run_dir / "out.xyz").read_bytes() == (ref_dir / "out.xyz").read_bytes()

    status = run_cli("status", "out.xyz", cwd=run_dir, env=env)
    assert status.returncode == 0, status.stderr
    assert "(complete)" in status.stdout
    assert f"{n_structures} done, 0 failed, 0 pending" in status.stdout
    assert "wfl_like.calculators.generic._calculate_op" in status.stdout and "GatedEMT" in status.stdout

    again = run_cli(*calculate, cwd=run_dir, env=env)
    assert again.returncode == 0 and "nothing changed" in again.stderr, again.stderr


@pytest.mark.timeout(600)
def test_cli_overwrite_recomputes_and_status_without_journal_is_a_usage_error(tmp_path):
    calculate = ["calculate", EXAMPLE, "-o", "out.xyz"]
    assert run_cli(*calculate, cwd=tmp_path).returncode == 0
    again = run_cli(*calculate, cwd=tmp_path)
    assert "nothing changed" in again.stderr and "finished" not in again.stderr
    forced = run_cli(*calculate, "--overwrite", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert "finished 40 items" in forced.stderr and "reused" not in forced.stderr

    ase.io.write(tmp_path / "foreign.xyz", structures(2))
    status = run_cli("status", "foreign.xyz", cwd=tmp_path)
    assert status.returncode == 2
    assert status.stdout == ""
    assert len(status.stderr.strip().splitlines()) == 1
    assert status.stderr.startswith("wfl-like: error: no journal for 'foreign.xyz'")


def test_editing_a_method_of_a_callable_class_changes_its_key(tmp_path):
    from wfl_like.autoparallelize.resume.fingerprint import fingerprint

    source = "class Op:\n    def __call__(self, items):\n        return items\n"
    module_path = tmp_path / "class_op_module.py"
    module_path.write_text(source)
    sys.path.insert(0, str(tmp_path))
    try:
        import class_op_module
        before = fingerprint(class_op_module.Op())
        module_path.write_text(source.replace("return items", "return items[::-1]"))
        importlib.reload(class_op_module)
        assert fingerprint(class_op_module.Op()) != before
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("class_op_module", None)


MEMO_MODULE = '''
import collections

class Memo:
    def __init__(self):
        self._entries = collections.OrderedDict()

    def get(self, key):
        if key not in self._entries:
            self._entries[key] = key * 2
        return self._entries[key]

_memo = Memo()
_seen = {}

def remember(key):
    _seen[key] = True

def doubled_op(items):
    for atoms in items:
        atoms.info["doubled"] = _memo.get(len(atoms))
        remember(len(atoms))
        atoms.info["seen"] = len(_seen)
    return items
'''


def test_state_that_a_run_fills_does_not_make_the_next_identical_call_recompute(tmp_path, monkeypatch):
    """A module-level memo object, or a dict one function fills and another reads, holds what
    ran before in this process: the next call's key must not change with it."""
    (tmp_path / "memo_ops.py").write_text(MEMO_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import memo_ops

    ase.io.write(tmp_path / "in.xyz", [Atoms("Cu" * n, positions=np.zeros((n, 3))) for n in (1, 2, 3)])
    out = tmp_path / "out.xyz"
    autoparallelize(memo_ops.doubled_op, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out),
                    autopara_info={"num_python_subprocesses": 0})
    with open(tmp_path / "in.xyz", "a") as handle:
        ase.io.write(handle, Atoms("Cu4", positions=np.zeros((4, 3))), format="extxyz")
    autoparallelize(memo_ops.doubled_op, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out),
                    autopara_info={"num_python_subprocesses": 0})
    assert read_manifest(out)["items"] == {"total": 4, "failed": 0, "computed": 1, "reused": 3}
