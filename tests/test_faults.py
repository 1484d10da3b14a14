"""Crash matrix: a run survives dead workers, failing items and hangs (issue 3).

In the spirit of loky's tests: an operation that misbehaves on chosen items (by
``info["label"]``) in every way a calculator can -- ``os._exit``, SIGKILL of its own
worker, a real segmentation fault, an exception, a hang -- with chunks of 1 and 3
items, ``errors="raise"`` and ``errors="skip"``, and two worker processes.  Every other
item must come out right and in input order, every failure must be recorded with the
right reason, and no worker process may remain.  Real processes and real files only.
"""

import multiprocessing
import os
import signal
import tempfile
import time
import warnings

import ase.io
import pytest
from ase import Atoms

from wfl_like import ConfigSet, OutputSpec
from wfl_like.autoparallelize import AutoparaInfo, autoparallelize
from wfl_like.autoparallelize.base import FAIL_FAST_AFTER
from wfl_like.errors import AutoparallelizeError, FailedItemsWarning, TaskTimeoutError, WorkerDiedError
from helpers import is_running, listing, process_state

ENV = "WFL_NUM_PYTHON_SUBPROCESSES"
N_ITEMS = 10
BAD = (2, 7)       # with chunks of 3: the last item of chunk [0, 1, 2], the middle one of [6, 7, 8]
# Seconds per item for the hangs.  It also bounds the good items run with it, so it is
# far above what one takes even on a loaded machine; a hang sleeps far longer still.
TIMEOUT = 5
RETRIES = 2        # the default


# --- structures and helpers ----------------------------------------------------------


def make_atoms(label):
    atoms = Atoms("H", positions=[[0.0, 0.0, 0.1 * label]], cell=[3, 3, 3], pbc=True)
    atoms.info["label"] = label
    return atoms


def make_list(n):
    return [make_atoms(i) for i in range(n)]


def labels(configs):
    return [atoms.info["label"] for atoms in configs]


def value_of(label):
    return label * label + 1


def child_pids():
    """Processes whose parent is this one, zombies included, whichever thread started them.

    Replacement workers are started by the pool's dispatcher thread, so every thread's
    ``children`` file is read, not only the main thread's.
    """
    me = os.getpid()
    pids = set()
    for task in os.listdir(f"/proc/{me}/task"):
        try:
            with open(f"/proc/{me}/task/{task}/children") as f:
                pids.update(int(word) for word in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass        # the thread ended meanwhile
    return pids


def runs_of(directory):
    """``{label: [pid of each run, ...]}`` from the markers the op writes as it starts an item."""
    runs = {}
    for path in directory.iterdir():
        if path.name.startswith("run-"):
            _, label, pid, _ = path.name.split("-", 3)
            runs.setdefault(int(label), []).append(int(pid))
    return runs


def para(nproc, chunk=1, **more):
    return AutoparaInfo(num_python_subprocesses=nproc, num_inputs_per_python_subprocess=chunk, **more)


@pytest.fixture(autouse=True)
def no_worker_left(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    before = child_pids()
    yield
    # read /proc before active_children(), which would reap (and so hide) a zombie
    left = child_pids() - before
    assert not left, f"processes {sorted(left)} outlived the call: {[process_state(p) for p in left]}"
    assert [p for p in multiprocessing.active_children() if p.name == "wfl_like-worker"] == []


# --- operations: module level, as workers need them ----------------------------------------


def _record_run(directory, label):
    fd, _ = tempfile.mkstemp(dir=directory, prefix=f"run-{label}-{os.getpid()}-")
    os.close(fd)


def _misbehave(kind, label):
    if kind == "exit":
        os._exit(3)
    elif kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "segfault":
        import ctypes
        import faulthandler
        import resource
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))     # no core file
        faulthandler.disable()       # pytest's dump of every thread would only clutter the output
        ctypes.string_at(0)
    elif kind == "raise":
        raise ValueError(f"label {label} is refused")
    elif kind == "hang":
        time.sleep(600)      # only the time limit ends it
    raise AssertionError(f"{kind} did not misbehave")


def misbehave_op(atoms_list, kind, bad, directory):
    """Record each run of an item, misbehave on the labels in ``bad``, compute a value for the rest."""
    out = []
    for atoms in atoms_list:
        label = atoms.info["label"]
        _record_run(directory, label)
        if label in bad:
            _misbehave(kind, label)
        atoms.info["value"] = value_of(label)
        atoms.info["pid"] = os.getpid()
        out.append(atoms)
    return out


def die_first_time_op(atoms_list, flaky, marker, directory):
    """Kill the worker on the item labelled ``flaky`` unless ``marker`` exists; create it first."""
    for atoms in atoms_list:
        label = atoms.info["label"]
        _record_run(directory, label)
        if label == flaky and not os.path.exists(marker):
            with open(marker, "x"):
                pass
            os.kill(os.getpid(), signal.SIGKILL)
        atoms.info["value"] = value_of(label)
    return atoms_list


def slow_op(atoms_list, seconds, directory):
    for atoms in atoms_list:
        _record_run(directory, atoms.info["label"])
        time.sleep(seconds)
        atoms.info["value"] = value_of(atoms.info["label"])
    return atoms_list


def raise_op(atoms_list, same_message):
    for atoms in atoms_list:
        raise KeyError("missing_parameter" if same_message else f"missing_parameter_{atoms.info['label']}")
    return atoms_list


def fails_after_first_op(atoms_list):
    for atoms in atoms_list:
        if atoms.info["label"] > 0:
            raise KeyError("missing_parameter")
        atoms.info["value"] = value_of(atoms.info["label"])
    return atoms_list


# --- the crash matrix ----------------------------------------------------------------------


# kind: (exception type, exit code of the worker or None, words of the reason, retried when its worker dies)
KINDS = {
    "exit": (WorkerDiedError, 3, ["worker died", "exit code 3", f"({RETRIES + 1} times)"], True),
    "sigkill": (WorkerDiedError, -signal.SIGKILL, ["worker died", "signal 9", "SIGKILL",
                                                   f"({RETRIES + 1} times)"], True),
    "segfault": (WorkerDiedError, -signal.SIGSEGV, ["worker died", "signal 11", "SIGSEGV",
                                                    "segmentation fault", f"({RETRIES + 1} times)"], True),
    "raise": (ValueError, None, ["ValueError: label {label} is refused"], False),
    "hang": (TaskTimeoutError, None, [f"timed out after {TIMEOUT} s"], False),
}


# a hang in a chunk of 3 waits out the chunk's limit, then its own alone: 4 x TIMEOUT
@pytest.mark.timeout(180)
@pytest.mark.parametrize("errors", ["raise", "skip"])
@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize("kind", list(KINDS))
def test_crash_matrix(tmp_path, kind, chunk, errors):
    exc_type, exitcode, words, retried = KINDS[kind]
    runs_dir, out_dir = tmp_path / "runs", tmp_path / "out"
    runs_dir.mkdir()
    out_dir.mkdir()
    out = out_dir / "out.xyz"
    info = para(2, chunk, errors=errors, timeout=TIMEOUT if kind == "hang" else None)
    good = [label for label in range(N_ITEMS) if label not in BAD]

    def run():
        return autoparallelize(misbehave_op, ConfigSet(make_list(N_ITEMS)), OutputSpec(out), kind, BAD,
                               str(runs_dir), autopara_info=info)

    if errors == "raise":
        with pytest.raises(AutoparallelizeError) as raised:
            run()
        error = raised.value
        failures = error.failures
        assert not error.stopped_early
        message = str(error)
        assert "misbehave_op" in message and f"failed on {len(BAD)} input items" in message
        for failure in failures:
            assert f"item {failure.index}: {failure.reason}" in message
        # no file at the final path, no partial file left either
        assert listing(out_dir) == []
    else:
        with pytest.warns(FailedItemsWarning) as record:
            result = run()
        [warning] = [w.message for w in record if isinstance(w.message, FailedItemsWarning)]
        failures = result.failures
        assert warning.failures == failures
        assert all(f"item {label}:" in str(warning) for label in BAD)
        # every other item, in input order, with its computed value, in memory and in the file
        assert result.files() == [out]
        for configs in (list(result), ase.io.read(out, ":")):
            assert labels(configs) == good
            assert [atoms.info["value"] for atoms in configs] == [value_of(label) for label in good]
        assert listing(out_dir) == ["out.xyz"]

    runs = runs_of(runs_dir)
    # every other item ran: the outputs above came from runs, not from nowhere
    assert sorted(runs) == list(range(N_ITEMS))
    worker_pids = {pid for pids in runs.values() for pid in pids}
    assert os.getpid() not in worker_pids

    # the failure records: one per bad item, in input order, with the right reason and exception
    assert [f.index for f in failures] == list(BAD)
    for failure in failures:
        label = failure.index
        for word in words:
            assert word.format(label=label) in failure.reason, failure.reason
        assert type(failure.exception) is exc_type
        assert failure.traceback
        if exc_type is WorkerDiedError:
            assert failure.exception.exitcode == exitcode
            assert failure.exception.pid in runs[label]          # a worker that ran this item
        elif exc_type is TaskTimeoutError:
            assert failure.exception.timeout == TIMEOUT
            assert failure.exception.pid in runs[label]          # the worker that hung on it
        else:
            assert str(failure.exception) == f"label {label} is refused"
            assert "_misbehave" in failure.traceback              # the worker's own traceback

        # how often the item ran: once in its chunk (chunk > 1), then alone: once, plus the
        # retries when it kills its worker
        alone = 1 + (RETRIES if retried else 0)
        assert len(runs[label]) == alone + (1 if chunk > 1 else 0), runs[label]

    for label in good:
        # the op stops at the bad item, so in a failed chunk only the items before it ran;
        # each item of a failed chunk then runs again alone (else, in errors="raise", an
        # item whose chunk failed might never complete); every other item runs once
        ran_in_failed_chunk = chunk > 1 and any(label // chunk == bad // chunk and label < bad for bad in BAD)
        assert len(runs[label]) == (2 if ran_in_failed_chunk else 1), (label, runs[label])

    # no worker survives: not running, not even a zombie of ours (see also the fixture)
    assert not any(is_running(pid) for pid in worker_pids)
    assert not worker_pids & child_pids()


# --- retries ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("retries", [0, 1])
def test_retries_sets_how_often_an_item_whose_worker_dies_runs(tmp_path, retries):
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    with pytest.warns(FailedItemsWarning, match="item 1: worker died"):
        result = autoparallelize(misbehave_op, ConfigSet(make_list(4)), OutputSpec(), "sigkill", (1,),
                                 str(runs_dir), autopara_info=para(2, 1, errors="skip", retries=retries))
    assert labels(result) == [0, 2, 3]
    [failure] = result.failures
    assert failure.index == 1
    assert "SIGKILL" in failure.reason
    assert failure.exception.exitcode == -signal.SIGKILL
    if retries:
        assert failure.reason.endswith(f"({retries + 1} times)")
    else:
        assert "times" not in failure.reason                # it ran once: nothing to count
    assert len(runs_of(runs_dir)[1]) == retries + 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunk", [1, 3])
def test_item_that_kills_its_worker_only_once_succeeds_on_the_retry(tmp_path, chunk):
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    marker = tmp_path / "died-once"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FailedItemsWarning)
        result = autoparallelize(die_first_time_op, ConfigSet(make_list(6)), OutputSpec(tmp_path / "out.xyz"),
                                 1, str(marker), str(runs_dir), autopara_info=para(2, chunk, errors="raise"))
    assert marker.exists()                                  # it did kill its worker once
    assert result.failures == []
    assert labels(result) == list(range(6))
    assert [atoms.info["value"] for atoms in result] == [value_of(label) for label in range(6)]
    runs = runs_of(runs_dir)
    # the run that died, then the one that worked, in another (the replacement) worker
    assert len(runs[1]) == 2 and len(set(runs[1])) == 2
    assert not any(is_running(pid) for pid in runs[1])


# --- timeouts ----------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_timeout_is_per_item_so_a_chunk_has_its_length_times_the_limit(tmp_path):
    # each item takes less than the limit, the chunk of 3 surely more (sleeps never end
    # early): nothing times out, and no item runs twice (a chunk timed out as a whole would
    # be rerun item by item); the chunk's budget leaves it 4.5 s to spare
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    result = autoparallelize(slow_op, ConfigSet(make_list(3)), OutputSpec(), 1.0, str(runs_dir),
                             autopara_info=para(1, 3, timeout=2.5))
    assert labels(result) == [0, 1, 2]
    assert [atoms.info["value"] for atoms in result] == [value_of(label) for label in range(3)]
    runs = runs_of(runs_dir)
    assert {label: len(pids) for label, pids in runs.items()} == {0: 1, 1: 1, 2: 1}
    assert len({pid for pids in runs.values() for pid in pids}) == 1      # one chunk, one worker


@pytest.mark.timeout(90)
def test_worker_killed_by_timeout_is_replaced_and_later_items_still_run(tmp_path):
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    # one worker only: if the killed one were not replaced, nothing could run after item 0
    with pytest.warns(FailedItemsWarning, match=f"item 0: timed out after {TIMEOUT} s"):
        result = autoparallelize(misbehave_op, ConfigSet(make_list(5)), OutputSpec(), "hang", (0,), str(runs_dir),
                                 autopara_info=para(1, 1, errors="skip", timeout=TIMEOUT))
    assert labels(result) == [1, 2, 3, 4]
    assert [atoms.info["value"] for atoms in result] == [value_of(label) for label in range(1, 5)]
    [failure] = result.failures
    assert isinstance(failure.exception, TaskTimeoutError)
    killed = failure.exception.pid
    assert runs_of(runs_dir)[0] == [killed]                 # the worker that hung was the one killed
    later = {atoms.info["pid"] for atoms in result}
    assert killed not in later
    assert os.getpid() not in later                         # still in a worker, not in the driver
    assert not is_running(killed)


def test_timeout_without_worker_processes_warns_that_it_is_not_enforced(tmp_path):
    # a hang in the calling process cannot be stopped, so it is not tested; the warning is
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    with pytest.warns(UserWarning, match=r"timeout=1 is not enforced.*worker processes"):
        result = autoparallelize(misbehave_op, ConfigSet(make_list(3)), OutputSpec(), "raise", (), str(runs_dir),
                                 autopara_info=para(0, 1, timeout=1))
    assert labels(result) == [0, 1, 2]
    assert {pid for pids in runs_of(runs_dir).values() for pid in pids} == {os.getpid()}


def test_timeout_with_workers_does_not_warn(tmp_path):
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        result = autoparallelize(misbehave_op, ConfigSet(make_list(3)), OutputSpec(), "raise", (), str(runs_dir),
                                 autopara_info=para(2, 1, timeout=30))
    assert labels(result) == [0, 1, 2]


# --- the fail-fast rule ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_twelve_items_failing_the_same_way_stop_the_run_early(tmp_path):
    out = tmp_path / "out.xyz"
    with pytest.raises(AutoparallelizeError, match="so the run was stopped") as raised:
        autoparallelize(raise_op, ConfigSet(make_list(12)), OutputSpec(out), True,
                        autopara_info=para(2, 1))
    error = raised.value
    assert error.stopped_early
    # stopped at the rule's count, before the last items were handed back
    assert [f.index for f in error.failures] == list(range(FAIL_FAST_AFTER))
    assert {f.reason for f in error.failures} == {"KeyError: 'missing_parameter'"}
    assert listing(tmp_path) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("op, args, expected_reasons", [
    # item 0 succeeds: not a setup problem
    (fails_after_first_op, (), {"KeyError: 'missing_parameter'"}),
    # every item fails, but each its own way
    (raise_op, (False,), {f"KeyError: 'missing_parameter_{label}'" for label in range(12)}),
])
def test_failures_with_a_success_or_different_reasons_do_not_stop_the_run(tmp_path, op, args, expected_reasons):
    out = tmp_path / "out.xyz"
    with pytest.raises(AutoparallelizeError) as raised:
        autoparallelize(op, ConfigSet(make_list(12)), OutputSpec(out), *args, autopara_info=para(2, 1))
    error = raised.value
    assert not error.stopped_early
    first = 1 if op is fails_after_first_op else 0
    assert [f.index for f in error.failures] == list(range(first, 12))
    assert {f.reason for f in error.failures} == expected_reasons
    assert f"failed on {12 - first} input items" in str(error)
    assert listing(tmp_path) == []


def rattle_in_place_failing_on_label_4(items, _autopara_per_item_info=None):
    """Changes its inputs (and advances their generators) before it fails on label 4."""
    for atoms, item in zip(items, _autopara_per_item_info):
        atoms.positions += item["rng"].normal(scale=0.01, size=atoms.positions.shape)
    for atoms in items:
        if atoms.info["label"] == 4:
            raise ValueError("label 4 is refused")
    return items


@pytest.mark.parametrize("chunk", [3, 5])
def test_items_of_a_failed_chunk_rerun_from_what_was_read_in_a_serial_run(tmp_path, chunk):
    # a failed chunk's items run again one by one: serially they must start from the
    # structures as read and their generators as spawned, as on a worker, or their outputs
    # would depend on which chunk-mate failed
    import numpy as np

    ase.io.write(tmp_path / "in.xyz", [make_atoms(i) for i in range(N_ITEMS)], parallel=False)
    outputs = {}
    for workers, size in ((0, chunk), (2, 1)):
        out = tmp_path / f"out-{workers}.xyz"
        with pytest.warns(FailedItemsWarning):
            autoparallelize(rattle_in_place_failing_on_label_4, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out),
                            rng=np.random.default_rng(5),
                            autopara_info={"num_python_subprocesses": workers, "errors": "skip",
                                           "num_inputs_per_python_subprocess": size})
        outputs[workers] = out.read_bytes()
    assert outputs[0] == outputs[2]
