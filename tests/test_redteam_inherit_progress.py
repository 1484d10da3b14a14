"""Red-team tests of inherited inputs of forked workers, queued jobs and progress bars.

Seven of them were breaks when they were written (a console handler's level, stream or
absence ignored while a bar is drawn, handlers lost by overlapping calls, objects shared by
the structures of a chunk split by forked workers), now fixed; the others confirm what held.
"""

import logging
import sys
import threading
import warnings

import numpy as np
import pytest
from ase import Atoms

from wfl_like import OutputSpec, autoparallelize
from wfl_like.errors import AutoparallelizeError


@pytest.fixture(autouse=True)
def _defaults(monkeypatch):
    monkeypatch.delenv("WFL_NUM_PYTHON_SUBPROCESSES", raising=False)
    monkeypatch.delenv("WFL_LIKE_START_METHOD", raising=False)
    monkeypatch.delenv("WFL_LIKE_PROGRESS", raising=False)
    monkeypatch.delenv("WFL_EXPYRE_INFO", raising=False)


def cells(n):
    out = []
    for i in range(n):
        atoms = Atoms("CuH", positions=[[0.0, 0.0, 0.1 * i], [1.0, 1.0, 1.0]], cell=[3, 3, 4], pbc=True)
        atoms.info["label"] = i
        out.append(atoms)
    return out


# ---------------------------------------------------------------- progress: logging redirect

def chatty(items):
    """Logs at INFO and WARNING in the process running it (the driver when serial)."""
    for atoms in items:
        logging.getLogger("redteam.user").info("INFO-LINE-%d", atoms.info["label"])
        logging.getLogger("redteam.user").warning("WARN-LINE-%d", atoms.info["label"])
    return items


@pytest.fixture
def root_logging():
    """The root logger's handlers and level, restored after the test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def call_with_bar(op, n=3, **more):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return autoparallelize(op, cells(n), OutputSpec(),
                               autopara_info={"progress": True, "num_python_subprocesses": 0, **more})


def test_a_console_handler_level_still_holds_while_the_bar_is_drawn(root_logging, capsys):
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    root_logging.handlers[:] = [handler]
    root_logging.setLevel(logging.INFO)
    call_with_bar(chatty)
    err = capsys.readouterr().err
    assert "WARN-LINE-0" in err
    assert "INFO-LINE-0" not in err, "an INFO line reached a console handler set to WARNING"


def test_a_script_logging_only_to_a_file_gets_no_log_lines_on_the_console(root_logging, capsys, tmp_path):
    handler = logging.FileHandler(tmp_path / "run.log")
    root_logging.handlers[:] = [handler]
    root_logging.setLevel(logging.INFO)
    call_with_bar(chatty)
    handler.close()
    err = capsys.readouterr().err
    assert "WARN-LINE-0" in (tmp_path / "run.log").read_text()
    assert "WARN-LINE-0" not in err and "INFO-LINE-0" not in err, "log lines meant for a file reached stderr"


def test_two_console_handlers_each_keep_their_stream_while_the_bar_is_drawn(root_logging, capsys):
    out_handler = logging.StreamHandler(sys.stdout)
    err_handler = logging.StreamHandler(sys.stderr)
    err_handler.setLevel(logging.WARNING)
    root_logging.handlers[:] = [out_handler, err_handler]
    root_logging.setLevel(logging.INFO)
    call_with_bar(chatty)
    captured = capsys.readouterr()
    assert "INFO-LINE-0" in captured.out
    assert "WARN-LINE-0" in captured.err, "the stderr handler's lines did not reach stderr"


def failing_after_one(items):
    if items[0].info["label"] >= 1:
        raise RuntimeError("boom")
    return items


@pytest.mark.parametrize("workers", [0, 2])
def test_a_call_that_raises_leaves_the_root_handlers_as_they_were(root_logging, capsys, workers):
    handler = logging.StreamHandler(sys.stderr)
    root_logging.handlers[:] = [handler]
    with pytest.raises(AutoparallelizeError):
        call_with_bar(failing_after_one, n=4, num_inputs_per_python_subprocess=1, num_python_subprocesses=workers)
    assert root_logging.handlers == [handler] and root_logging.handlers[0] is handler
    root_logging.warning("AFTER-THE-CALL")
    assert "AFTER-THE-CALL" in capsys.readouterr().err


def test_a_keyboard_interrupt_during_a_call_with_a_bar_leaves_the_handlers(root_logging, capsys):
    handler = logging.StreamHandler(sys.stderr)
    root_logging.handlers[:] = [handler]

    def interrupted(items):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        call_with_bar(interrupted)
    assert root_logging.handlers == [handler]


def slow_until(event):
    def op(items):
        event.wait(30)
        return items
    return op


def test_two_overlapping_calls_with_bars_leave_the_root_handlers_as_they_were(root_logging, capsys):
    handler = logging.StreamHandler(sys.stderr)
    root_logging.handlers[:] = [handler]
    first_may_end, second_may_end = threading.Event(), threading.Event()
    first = autoparallelize(slow_until(first_may_end), cells(2), OutputSpec(),
                            autopara_info={"progress": True, "num_python_subprocesses": 0, "wait": False})
    # the first call's bar is drawn once its thread runs; the second starts after it
    for _ in range(200):
        if root_logging.handlers != [handler]:
            break
        threading.Event().wait(0.05)
    second = autoparallelize(slow_until(second_may_end), cells(2), OutputSpec(),
                             autopara_info={"progress": True, "num_python_subprocesses": 0, "wait": False})
    threading.Event().wait(0.5)
    first_may_end.set()
    first.result(timeout=60)
    second_may_end.set()
    second.result(timeout=60)
    assert root_logging.handlers == [handler], f"root handlers after both calls: {root_logging.handlers}"


def test_a_handler_added_while_a_background_call_draws_its_bar_stays(root_logging, capsys, tmp_path):
    root_logging.handlers[:] = [logging.StreamHandler(sys.stderr)]
    may_end = threading.Event()
    future = autoparallelize(slow_until(may_end), cells(2), OutputSpec(),
                             autopara_info={"progress": True, "num_python_subprocesses": 0, "wait": False})
    for _ in range(200):
        if not any(type(h) is logging.StreamHandler for h in root_logging.handlers):
            break
        threading.Event().wait(0.05)
    added = logging.FileHandler(tmp_path / "later.log")
    root_logging.addHandler(added)
    may_end.set()
    future.result(timeout=60)
    try:
        assert added in root_logging.handlers, "the caller's handler was removed when the call ended"
    finally:
        added.close()


# ---------------------------------------------------------------- inherited inputs of forked workers

def run_list(op, inputs, workers, monkeypatch, start=None, chunk=2, **more):
    if start is not None:
        monkeypatch.setenv("WFL_LIKE_START_METHOD", start)
    else:
        monkeypatch.delenv("WFL_LIKE_START_METHOD", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(autoparallelize(op, inputs, OutputSpec(), **more,
                                    autopara_info={"num_python_subprocesses": workers,
                                                   "num_inputs_per_python_subprocess": chunk}))


def append_label_to_shared_log(items):
    """Appends each structure's label to the list in its info (one list shared by all of them)."""
    for atoms in items:
        atoms.info["log"].append(atoms.info["label"])
    return items


def sharing_one_log(n=4):
    items = cells(n)
    shared = []
    for atoms in items:
        atoms.info["log"] = shared
    return items


def test_forked_workers_keep_objects_shared_by_the_structures_of_a_chunk_as_spawned_ones_do(monkeypatch):
    spawned = run_list(append_label_to_shared_log, sharing_one_log(), 2, monkeypatch, start="spawn")
    forked = run_list(append_label_to_shared_log, sharing_one_log(), 2, monkeypatch, start="fork")
    assert [a.info["log"] for a in spawned] == [[0, 1], [0, 1], [2, 3], [2, 3]]
    assert [a.info["log"] for a in forked] == [a.info["log"] for a in spawned]


class CountingCalculator:
    """A calculator-like object that counts the structures it was asked about (one object for all)."""

    def __init__(self):
        self.count = 0


def count_with_the_shared_calculator(items):
    for atoms in items:
        atoms.info["counter"].count += 1
        atoms.info["seen_by_counter"] = atoms.info["counter"].count
    return items


def sharing_one_counter(n=4):
    items = cells(n)
    counter = CountingCalculator()
    for atoms in items:
        atoms.info["counter"] = counter
    return items


def test_forked_workers_keep_one_object_shared_by_non_plain_items_of_a_chunk(monkeypatch):
    spawned = run_list(count_with_the_shared_calculator, sharing_one_counter(), 2, monkeypatch, start="spawn")
    forked = run_list(count_with_the_shared_calculator, sharing_one_counter(), 2, monkeypatch, start="fork")
    assert [a.info["seen_by_counter"] for a in spawned] == [1, 2, 1, 2]
    assert [a.info["seen_by_counter"] for a in forked] == [1, 2, 1, 2]


def draw_then_kill_the_driver(items, _autopara_per_item_info, marker=None):
    """Each item's draw in its info; the worker meeting label 5 SIGKILLs the driver once (``marker``)."""
    import os
    import signal

    for atoms, info in zip(items, _autopara_per_item_info):
        if marker is not None and atoms.info["label"] == 5 and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getppid(), signal.SIGKILL)
            os._exit(1)
        atoms.info["draw"] = float(info["rng"].random())
        atoms.positions[0, 0] += atoms.info["draw"]
    return items


RESUMED_DRIVER = """
import sys
sys.path.insert(0, {tests!r})
import numpy as np
from ase import Atoms
from wfl_like import OutputSpec, autoparallelize
import test_redteam_inherit_progress as ops

items = ops.cells(8)
items = items[:3] + [items[0]] + items[3:]          # one structure twice
autoparallelize(ops.draw_then_kill_the_driver, items, OutputSpec("out.xyz"), rng=np.random.default_rng(1),
                marker="killed", autopara_info={{"num_python_subprocesses": 2, "num_inputs_per_python_subprocess": 1}})
"""


def test_list_inputs_to_a_file_resumed_after_the_driver_is_killed_give_the_serial_bytes(tmp_path, monkeypatch):
    import subprocess
    from pathlib import Path

    items = cells(8)
    items = items[:3] + [items[0]] + items[3:]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "serial").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        autoparallelize(draw_then_kill_the_driver, items, OutputSpec("serial/out.xyz"),
                        rng=np.random.default_rng(1), autopara_info={"num_python_subprocesses": 0})
    script = tmp_path / "driver.py"
    script.write_text(RESUMED_DRIVER.format(tests=str(Path(__file__).resolve().parent)))
    env = {**__import__("os").environ, "WFL_LIKE_START_METHOD": "fork"}
    first = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120)
    assert first.returncode == -9, first.stderr[-3000:]
    second = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert second.returncode == 0, second.stderr[-3000:]
    assert (tmp_path / "out.xyz").read_bytes() == (tmp_path / "serial" / "out.xyz").read_bytes()


# ---------------------------------------------------------------- queued jobs (local Slurm)

def draw_and_shift(items, _autopara_per_item_info):
    """Each item's own generator decides its output: identical structures give different outputs."""
    for atoms, info in zip(items, _autopara_per_item_info):
        draw = float(info["rng"].random())
        atoms.info["draw"] = draw
        atoms.positions[0, 0] += draw
    return items


def _queued(op, in_paths, out, info, rng_seed, **kwargs):
    from wfl_like import ConfigSet

    return autoparallelize(op, ConfigSet(in_paths), OutputSpec(out), rng=np.random.default_rng(rng_seed),
                           autopara_info=info, **kwargs)


def _remote(per_job, **options):
    from helpers import queued_remote_info

    return {"remote_info": queued_remote_info(per_job, "wfl_like_rt2", 0.2, **options)}


@pytest.mark.slurm
@pytest.mark.timeout(300)
@pytest.mark.parametrize("per_job", [1, 4])
def test_identical_structures_with_outputs_of_their_own_each_take_their_own_record(tmp_path, per_job):
    import ase.io

    base = cells(3)
    ase.io.write(tmp_path / "in.xyz", [base[0], base[1], base[0].copy(), base[2], base[0].copy()])
    _queued(draw_and_shift, tmp_path / "in.xyz", tmp_path / "serial.xyz", {"num_python_subprocesses": 0}, 1)
    expected = (tmp_path / "serial.xyz").read_bytes()
    out = tmp_path / "out.xyz"
    assert _queued(draw_and_shift, tmp_path / "in.xyz", out, _remote(per_job, wait_for_results=False), 1) is None
    _queued(draw_and_shift, tmp_path / "in.xyz", out, _remote(per_job), 1)
    assert out.read_bytes() == expected
    # once more, everything from the journal
    _queued(draw_and_shift, tmp_path / "in.xyz", out, _remote(per_job), 1)
    assert out.read_bytes() == expected


def shifted(items):
    for atoms in items:
        atoms.positions[0, 0] += 0.5
        atoms.info["seen"] = len(atoms)
    return items


def _files_call(tmp_path, names, info, prefix):
    from wfl_like import ConfigSet

    outs = [tmp_path / f"{prefix}_{name}" for name in names]
    autoparallelize(shifted, ConfigSet([tmp_path / name for name in names]),
                    OutputSpec([out.name for out in outs], file_root=tmp_path), autopara_info=info)
    return [out.read_bytes() for out in outs]


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_frames_moved_within_and_across_two_input_files_give_the_serial_outputs(tmp_path):
    import ase.io

    base = cells(6)
    ase.io.write(tmp_path / "a.xyz", [base[0], base[1], base[0].copy()])
    ase.io.write(tmp_path / "b.xyz", [base[2], base[3], base[0].copy()])
    _files_call(tmp_path, ["a.xyz", "b.xyz"], _remote(2), "q")
    # a frame inserted before the others of a.xyz, the last of b.xyz moved to the front of b.xyz
    ase.io.write(tmp_path / "a.xyz", [base[4], base[0], base[1], base[0].copy()])
    ase.io.write(tmp_path / "b.xyz", [base[0].copy(), base[2], base[3], base[5]])
    expected = _files_call(tmp_path, ["a.xyz", "b.xyz"], {"num_python_subprocesses": 0}, "s")
    got = _files_call(tmp_path, ["a.xyz", "b.xyz"], _remote(2), "q")
    assert (tmp_path / ".q_a.xyz.journal.jobs").exists(), "no queued jobs were run"
    assert got == expected


def tag_or_fail(items, tag, fail_label=None, pause=0.0):
    import time

    time.sleep(pause)
    for atoms in items:
        if atoms.info["label"] == fail_label:
            raise ValueError(f"label {fail_label} refused")
        atoms.info["tag"] = tag
    return items


def _tag_call(tmp_path, out_name, info, overwrite=False, **kwargs):
    from wfl_like import ConfigSet

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        autoparallelize(tag_or_fail, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out_name, file_root=tmp_path,
                                                                                 overwrite=overwrite),
                        autopara_info=info, **kwargs)
    path = tmp_path / out_name
    return path.read_bytes() if path.exists() else None


def _inputs(tmp_path, n=4):
    import ase.io

    ase.io.write(tmp_path / "in.xyz", cells(n))


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_overwrite_after_a_failed_queued_call_gives_the_new_arguments_outputs(tmp_path):
    _inputs(tmp_path)
    expected = _tag_call(tmp_path, "serial.xyz", {"num_python_subprocesses": 0}, tag="b")
    with pytest.raises(AutoparallelizeError):
        _tag_call(tmp_path, "out.xyz", _remote(2), tag="a", fail_label=1)
    assert _tag_call(tmp_path, "out.xyz", _remote(2), overwrite=True, tag="b") == expected


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_overwrite_with_a_changed_argument_while_the_old_calls_jobs_run(tmp_path):
    _inputs(tmp_path)
    expected = _tag_call(tmp_path, "serial.xyz", {"num_python_subprocesses": 0}, tag="b")
    assert _tag_call(tmp_path, "out.xyz", _remote(2, wait_for_results=False), tag="a", pause=3.0) is None
    assert _tag_call(tmp_path, "out.xyz", _remote(2), overwrite=True, tag="b") == expected


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_collected_then_overwritten_without_waiting_then_collected_then_changed(tmp_path):
    _inputs(tmp_path)
    expected_a = _tag_call(tmp_path, "serial_a.xyz", {"num_python_subprocesses": 0}, tag="a")
    expected_b = _tag_call(tmp_path, "serial_b.xyz", {"num_python_subprocesses": 0}, tag="b")
    assert _tag_call(tmp_path, "out.xyz", _remote(2), tag="a") == expected_a
    _tag_call(tmp_path, "out.xyz", _remote(2, wait_for_results=False), overwrite=True, tag="a", pause=1.0)
    assert _tag_call(tmp_path, "out.xyz", _remote(2), overwrite=True, tag="a") == expected_a
    assert _tag_call(tmp_path, "out.xyz", _remote(2), overwrite=True, tag="b") == expected_b


OVERWRITING_DRIVER = """
import json, os, signal, sys
sys.path.insert(0, {tests!r})
from wfl_like import ConfigSet, OutputSpec, autoparallelize
from wfl_like.autoparallelize.remote import registry
import test_redteam_inherit_progress as ops

die, info = sys.argv[1] == "die", json.loads(sys.argv[2])
real_submitted = registry.JobRegistry.submitted
if die:
    registry.JobRegistry.submitted = lambda self, *a, **k: (real_submitted(self, *a, **k),
                                                            os.kill(os.getpid(), signal.SIGKILL))
autoparallelize(ops.tag_or_fail, ConfigSet("in.xyz"), OutputSpec("out.xyz", overwrite=True),
                autopara_info={{"remote_info": info}}, tag="b", pause=1.0)
"""


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_collected_then_an_overwriting_driver_killed_then_rerun_gives_the_new_outputs(tmp_path):
    import json
    import subprocess
    from pathlib import Path

    _inputs(tmp_path, 4)
    expected_a = _tag_call(tmp_path, "serial_a.xyz", {"num_python_subprocesses": 0}, tag="a")
    expected_b = _tag_call(tmp_path, "serial_b.xyz", {"num_python_subprocesses": 0}, tag="b", pause=1.0)
    info = _remote(2)
    assert _tag_call(tmp_path, "out.xyz", info, tag="a") == expected_a
    script = tmp_path / "driver.py"
    script.write_text(OVERWRITING_DRIVER.format(tests=str(Path(__file__).resolve().parent)))
    remote_info = json.dumps(info["remote_info"])
    try:
        first = subprocess.run([sys.executable, str(script), "die", remote_info], cwd=tmp_path,
                               capture_output=True, text=True, timeout=120)
        assert first.returncode == -9, first.stderr[-3000:]
        second = subprocess.run([sys.executable, str(script), "live", remote_info], cwd=tmp_path,
                                capture_output=True, text=True, timeout=200)
        assert second.returncode == 0, second.stderr[-3000:]
        assert (tmp_path / "out.xyz").read_bytes() == expected_b
    finally:
        subprocess.run(["scancel", "--me", "-n", info["remote_info"]["job_name"]], capture_output=True)
