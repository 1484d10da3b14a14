"""What issue 10's review found: a call found by its own id on thread-shared executors, frames
refused when their bytes changed after they were hashed, and the reader/writer in the keys."""

import threading
import time

import ase.io
import pytest
from ase.build import bulk

from wfl_like import ConfigSet, OutputSpec
from wfl_like.autoparallelize import autoparallelize
from wfl_like.autoparallelize.frame_items import FrameChangedError, frame_items
from wfl_like.autoparallelize.workers import opcall
from wfl_like.autoparallelize.workers.frames_task import read_frames_of
from wfl_like.autoparallelize.workers.opcall import ByValue, OpCall
from wfl_like.errors import InputFileError


def _label(label):
    def op(items):
        return [label for _ in items]
    return op


def _slow_initializer():
    time.sleep(0.5)


def test_a_chunk_runs_its_own_call_while_another_call_installs_in_the_same_process():
    first = ByValue((OpCall(op=_label("A"), args=(), kwargs={}), None))
    second = ByValue((OpCall(op=_label("B"), args=(), kwargs={}), _slow_initializer))
    assert opcall.run_portable(first, (), "call-A", 0, [1], [None]) == ["A"]
    installing = threading.Thread(target=opcall.run_portable, args=(second, (), "call-B", 0, [1], [None]))
    installing.start()
    time.sleep(0.1)       # B is in its initializer now
    try:
        # A's chunk, sent without its call (the process has it), must get A's operation
        assert opcall.run_portable(None, (), "call-A", 0, [1, 2], [None, None]) == ["A", "A"]
    finally:
        installing.join()
    assert opcall.run_portable(None, (), "call-B", 0, [1], [None]) == ["B"]


def test_a_call_not_yet_in_the_process_is_asked_for():
    with pytest.raises(opcall.CallNotHere):
        opcall.run_portable(None, (), "never-installed", 0, [1], [None])


def _write_cells(path, n=3):
    cells = []
    for i in range(n):
        atoms = bulk("Cu", cubic=True)
        atoms.info["value"] = 1.0 + i
        cells.append(atoms)
    ase.io.write(path, cells, format="extxyz")


def test_frames_whose_bytes_changed_after_they_were_hashed_are_refused(tmp_path):
    path = tmp_path / "in.xyz"
    _write_cells(path)
    items = list(frame_items(ConfigSet(str(path)).frame_files(), hashed=True))
    text = path.read_text()
    assert "value=2.0" in text
    path.write_text(text.replace("value=2.0", "value=7.0"))     # same size, rewritten in place
    with pytest.raises(FrameChangedError, match="changed while the run was going on") as caught:
        read_frames_of(items)
    assert isinstance(caught.value, InputFileError)
    assert str(path) in str(caught.value)
    # frames not hashed (no journal kept) are read as they are now
    unhashed = list(frame_items(ConfigSet(str(path)).frame_files(), hashed=False))
    assert [atoms.info["value"] for atoms in read_frames_of(unhashed)] == [1.0, 7.0, 3.0]


def _counting(items, counter=None):
    with open(counter, "a") as handle:
        handle.write("x" * len(items))
    return items


@pytest.mark.parametrize("variable, value", [("WFL_LIKE_EXTXYZ_READER", "ase"), ("WFL_LIKE_EXTXYZ_WRITER", "ase")])
def test_another_reader_or_writer_recomputes_instead_of_reusing(tmp_path, monkeypatch, variable, value):
    source, counter = tmp_path / "in.xyz", tmp_path / "count"
    _write_cells(source)
    counter.write_text("")

    def run(overwrite=False):
        autoparallelize(_counting, ConfigSet(str(source)), OutputSpec(str(tmp_path / "out.xyz"), overwrite=overwrite),
                        counter=str(counter))

    run()
    assert len(counter.read_text()) == 3
    (tmp_path / "out.xyz").unlink()          # the journal alone now says what was done
    run()
    assert len(counter.read_text()) == 3     # reused: nothing changed
    (tmp_path / "out.xyz").unlink()
    monkeypatch.setenv(variable, value)
    run()
    assert len(counter.read_text()) == 6     # another parser or writer: computed again


def test_a_bad_reader_setting_fails_before_any_work(tmp_path, monkeypatch):
    source = tmp_path / "in.xyz"
    _write_cells(source)
    monkeypatch.setenv("WFL_LIKE_EXTXYZ_READER", "fortran")
    with pytest.raises(ValueError, match="WFL_LIKE_EXTXYZ_READER"):
        autoparallelize(_counting, ConfigSet(str(source)), OutputSpec(str(tmp_path / "out.xyz")),
                        counter=str(tmp_path / "count"))
    assert not (tmp_path / "out.xyz").exists()
