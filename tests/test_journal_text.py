"""The journal keeps outputs made for files as their text (format 4: with the location it was rendered at).

Real journals on disk through :class:`RunCache`, real driver processes killed with
SIGKILL; no mocks.  Until workers render their outputs themselves, a small driver here
plays the frames path: it reads each frame of the input by its byte range, renders the
output with :meth:`OutputSpec.render`, and journals the :class:`RenderedOutput`.
"""

import hashlib
import io
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import tracemalloc
import uuid
import zlib
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from helpers import driver_env, end_process_group, wait_for, wait_for_release
from wfl_like import ConfigSet, OutputSpec
from wfl_like.autoparallelize import autoparallelize
from wfl_like.autoparallelize.chunks import Chunk
from wfl_like.autoparallelize.frame_items import FrameItem
from wfl_like.autoparallelize.resume import stored
from wfl_like.autoparallelize.resume.cache import RunCache
from wfl_like.autoparallelize.resume.journal import FORMAT, Journal, journal_path
from wfl_like.autoparallelize.resume.relocate import relocated
from wfl_like.autoparallelize.workers.opcall import OpCall
from wfl_like.cli import main as cli_main
from wfl_like.configset import RenderedOutput
from wfl_like.errors import JournalError
from wfl_like.io import ownership
from wfl_like.locations import location_of

TESTS_DIR = Path(__file__).resolve().parent


# --- a driver of the frames path (module level: driver processes import it) ------------------------

def value_op(atoms_list, markers):
    """Marks each item computed; stores a value made from the structure."""
    for atoms in atoms_list:
        Path(markers, f"{atoms.info.get('label')}-{uuid.uuid4().hex}").touch()
        atoms.info["value"] = float(atoms.positions.sum())
    return atoms_list


def frame_items(path):
    """The frames of an extended XYZ file as FrameItems, hashed, with their locations."""
    data = Path(path).read_bytes()
    items, start = [], 0
    while start < len(data):
        end = data.index(b"\n", start) + 1
        for _ in range(int(data[start:end]) + 1):
            end = data.index(b"\n", end) + 1
        frame = data[start:end]
        loc = location_of(ase.io.read(io.StringIO(frame.decode()), format="extxyz"))
        items.append(FrameItem(str(path), start, end, loc or (len(items),),
                               hashlib.blake2b(frame, digest_size=32).digest()))
        start = end
    return items


def run_frames(inputs, out, markers, gate=None, stop_after=None, **spec):
    """Compute (or reuse) every frame of ``inputs`` into ``out``, one item per chunk.

    Returns the number of items computed.  With ``gate``, waits there after
    ``stop_after`` items are stored, so a test can kill it mid-run.
    """
    outputs = OutputSpec(out, **spec)
    call = OpCall(op=value_op, args=(str(markers),), kwargs={})
    cache = RunCache(journal_path(out), call, skip_failed=False, outputs=outputs)
    computed = 0
    try:
        outputs.claim(replace_existing=cache.record_of(outputs, None).wrote_them)
        cache.start()
        for index, item in enumerate(frame_items(inputs)):
            key, found, output = cache.lookup(index, item, None)
            chunk = Chunk(first=index, items=[item], locations=[item.location], rngs=[None], keys=[key],
                          cached=[output] if found else None)
            if found:
                cache.record(chunk, [], [])
            else:
                with open(item.path, "rb") as handle:
                    handle.seek(item.start)
                    frame = handle.read(item.end - item.start).decode()
                atoms = value_op([ase.io.read(io.StringIO(frame), format="extxyz")], markers)[0]
                output = outputs.render(atoms, item.location)
                cache.record(chunk, [(index, output)], [])
                computed += 1
            outputs.store_rendered(output)
            if gate is not None and index + 1 == stop_after:
                wait_for_release(gate, "half")
        outputs.close()
        cache.finish(index + 1, None, 0, outputs)
    except BaseException:
        outputs.discard()
        raise
    finally:
        cache.close()
    return computed


# --- inputs ---------------------------------------------------------------------------------------

def cells(n, seed=0, with_results=True):
    """``n`` 32-atom Cu cells, each with a label, and energy, forces and stress when asked."""
    rng = np.random.default_rng(seed)
    out = []
    for label in range(n):
        atoms = bulk("Cu", cubic=True).repeat((2, 2, 2))
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.info["label"] = label
        if with_results:
            atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal()), forces=rng.normal(size=(32, 3)),
                                               stress=rng.normal(size=6))
        out.append(atoms)
    return out


def varied():
    """Structures unlike each other: a molecule without cell, a non-orthogonal cell, mixed pbc,
    info of several types, a unicode string."""
    water = Atoms("H2O", positions=[[0, 0, 0], [0.76, 0.59, 0], [-0.76, 0.59, 0]])
    water.info.update(name="wasser-\u00e9\u00e8", flag=True, n=3, values=np.array([1.5, -2.0]))
    slab = Atoms("Cu2", positions=[[0, 0, 0], [1.2, 1.1, 0.4]], cell=[[3, 0, 0], [1, 3, 0], [0.5, 0.2, 9]],
                 pbc=[True, True, False])
    slab.new_array("charges", np.array([0.25, -0.25]))
    return [water, slab]


def markers_dir(tmp_path, name="markers"):
    directory = tmp_path / name
    directory.mkdir(exist_ok=True)
    return directory


def n_computed(markers):
    return sum(1 for _ in Path(markers).iterdir())


def cache_for(out, markers, **spec):
    outputs = OutputSpec(out, **spec)
    return RunCache(journal_path(out), OpCall(op=value_op, args=(markers,), kwargs={}), skip_failed=False,
                    outputs=outputs), outputs


def rendered_of(structures, outputs):
    return [outputs.render(atoms, (i,)) for i, atoms in enumerate(structures)]


def record_all(cache, items, outputs):
    """Journal ``outputs[i]`` as item ``i``'s (one run, complete)."""
    cache.start()
    for index, (item, output) in enumerate(zip(items, outputs)):
        key, found, _ = cache.lookup(index, item, None)
        assert not found
        cache.record(Chunk(index, [item], [(index,)], [None], keys=[key]), [(index, output)], [])
    cache.finish(len(items), None, 0, None)


def rows(out):
    with sqlite3.connect(journal_path(out)) as db:
        return db.execute("SELECT idx, form, output, file_i, count, size FROM items ORDER BY idx").fetchall()


def update_rows(out, sql, *params):
    with sqlite3.connect(journal_path(out)) as db:
        db.execute(sql, params)


# --- 1. text in, the very text out -------------------------------------------------------------------

@pytest.fixture(params=["isal", "zlib"])
def compressor(request, monkeypatch):
    """The journal's compressor: ISA-L where the package is installed, and Python's zlib, as on
    a machine without it (its import fails)."""
    if request.param == "isal":
        pytest.importorskip("isal", reason="the isal package is not installed here")
    else:
        monkeypatch.setitem(sys.modules, "isal", None)
    stored._isal_zlib.cache_clear()
    yield request.param
    stored._isal_zlib.cache_clear()


def test_rendered_outputs_come_back_from_the_journal_byte_for_byte_compressed_or_not(tmp_path, compressor):
    assert (stored._isal_zlib() is not None) == (compressor == "isal")
    out, markers = tmp_path / "out.xyz", markers_dir(tmp_path)
    cache, outputs = cache_for(out, markers)
    texts = rendered_of(cells(3) + varied() + cells(1, with_results=False), outputs)
    texts.append(RenderedOutput(0, "".join(t.text for t in texts[:2]), 2))     # one item, two structures
    items = [FrameItem("in.xyz", i, i + 1, (i,), bytes([i]) * 32) for i in range(len(texts))]
    record_all(cache, items, texts)
    cache.close()

    forms = [form for _, form, *_ in rows(out)]
    # 32-atom cells (1.9 kB, 3.7 kB with results) are compressed; small texts are kept as they are
    assert forms == [stored.ZLIB] * 3 + [stored.TEXT] * 2 + [stored.ZLIB] * 2
    for _, form, data, _, _, size in rows(out):
        assert isinstance(data, bytes) and (len(data) <= 0.75 * size if form == stored.ZLIB else len(data) == size)

    again, _ = cache_for(out, markers)
    again.start()
    try:
        found = [again.lookup(index, item, None) for index, item in enumerate(items)]
    finally:
        again.close()
    assert all(hit for _, hit, _ in found)
    assert [output for _, _, output in found] == texts
    assert all(type(output) is RenderedOutput and type(output.text) is str for _, _, output in found)


def test_outputs_that_are_not_file_text_keep_the_codec_format(tmp_path):
    out, markers = tmp_path / "out.xyz", markers_dir(tmp_path)
    cache, _ = cache_for(out, markers)
    structures = cells(2)
    record_all(cache, [FrameItem("in.xyz", i, i + 1, (i,), bytes([i]) * 32) for i in range(2)], structures)
    cache.close()
    assert [form for _, form, *_ in rows(out)] == [stored.CODEC] * 2
    assert all(isinstance(data, str) and data.startswith("{") for _, _, data, *_ in rows(out))


def test_the_frame_check_counts_whole_frames_only():
    frame = "2\ncomment\nH 0 0 0\nH 0 0 1\n"
    assert stored.frames_in("") == 0
    assert stored.frames_in(frame) == 1 and stored.frames_in(frame * 3) == 3
    for broken in (frame[:-1], frame + "1\n", "x\n" + frame[2:], "-1\n\n", " 9" * 20 + "\n", "\u0663\nc\nH\n\n"):
        assert stored.frames_in(broken) is None, broken


# --- 2. what is read back is checked -------------------------------------------------------------------

@pytest.fixture
def journaled(tmp_path):
    """A journal of two outputs kept as text: a 32-atom cell (compressed) and a small slab (not)."""
    out, markers = tmp_path / "out.xyz", markers_dir(tmp_path)
    cache, outputs = cache_for(out, markers)
    texts = rendered_of(cells(1) + varied()[1:], outputs)
    items = [FrameItem("in.xyz", i, i + 1, (i,), bytes([i]) * 32) for i in range(2)]
    record_all(cache, items, texts)
    cache.close()
    assert [form for _, form, *_ in rows(out)] == [stored.ZLIB, stored.TEXT]

    def look_up(index=0):
        again, _ = cache_for(out, markers)
        again.start()
        try:
            return again.lookup(index, items[index], None)
        finally:
            again.close()

    look_up.out, look_up.texts = out, texts
    return look_up


def expect_malformed(look_up, index=0, match=None):
    with pytest.raises(JournalError) as error:
        look_up(index)
    message = str(error.value)
    assert str(journal_path(look_up.out)) in message and f"item {index}" in message and "overwrite=True" in message
    if match is not None:
        assert match in message, message


def test_a_decompression_bomb_in_the_journal_costs_no_memory(journaled):
    bomb = zlib.compress(b"\0" * (200 << 20), 9)     # 200 MiB of zeros in 200 kB
    # claimed at its true size: more inflation than any text the journal keeps
    update_rows(journaled.out, "UPDATE items SET output=?, size=? WHERE idx=0", bomb, 200 << 20)
    tracemalloc.start()
    try:
        expect_malformed(journaled, match="more than")
        # claimed small: inflated no further than the length on record
        update_rows(journaled.out, "UPDATE items SET size=? WHERE idx=0", 60 * len(bomb))
        expect_malformed(journaled, match="does not end")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # inflating into a growing buffer may hold it twice, never more
    assert peak < 3 * stored.MAX_RATIO * len(bomb) < (200 << 20) / 5


@pytest.mark.parametrize("sql, params, index, match", [
    ("UPDATE items SET count=? WHERE idx=?", (2, 0), 0, "where 2 are on record"),
    ("UPDATE items SET count=? WHERE idx=?", (-1, 1), 1, "not a whole number"),
    ("UPDATE items SET file_i=? WHERE idx=?", (1, 0), 0, "output file 1"),
    ("UPDATE items SET file_i=? WHERE idx=?", ("zero", 1), 1, "not a whole number"),
    ("UPDATE items SET output=? WHERE idx=?", ("text, not bytes", 1), 1, "not bytes"),
    ("UPDATE items SET output=? WHERE idx=?", (12, 1), 1, "not bytes"),
    ("UPDATE items SET output=?, size=4 WHERE idx=?", (b"\xff\xfe\xfd\xfc", 1), 1, "not UTF-8"),
    ("UPDATE items SET output=?, size=15 WHERE idx=?", (b"no frames here\n", 1), 1, "no whole frames"),
    ("UPDATE items SET size=size+1 WHERE idx=?", (1,), 1, "not the"),
    ("UPDATE items SET output=substr(output, 1, 100) WHERE idx=?", (0,), 0, "does not end"),
    ("UPDATE items SET output=randomblob(1000) WHERE idx=?", (0,), 0, "damaged"),
    ("UPDATE items SET form=? WHERE idx=?", ("pickle", 1), 1, "unknown form"),
    ("UPDATE items SET form=? WHERE idx=?", ("codec", 1), 1, None),
    ("UPDATE items SET loc=? WHERE idx=?", ("five", 1), 1, "is not of the form"),
    ("UPDATE items SET loc=? WHERE idx=?", (" / -1", 0), 0, "is not of the form"),
    ("UPDATE items SET loc=? WHERE idx=?", (b" / 1", 1), 1, "not a location"),
    ("UPDATE items SET loc=NULL WHERE idx=?", (0,), 0, "not a location"),
])
def test_a_tampered_text_in_the_journal_is_a_journal_error_naming_the_file_and_item(journaled, sql, params, index,
                                                                                     match):
    update_rows(journaled.out, sql, *params)
    expect_malformed(journaled, index, match)


def test_an_untampered_journal_reads_back_after_the_checks(journaled):
    assert journaled(0) == (journaled(0)[0], True, journaled.texts[0])
    assert journaled(1)[1:] == (True, journaled.texts[1])


# --- 3. keys of frames: their bytes and their place ----------------------------------------------------

def test_a_frame_is_recomputed_when_its_bytes_change_and_reused_where_they_are_the_same(tmp_path):
    markers, out = markers_dir(tmp_path), tmp_path / "out.xyz"
    structures = cells(4)
    for i, atoms in enumerate(structures):
        atoms.info["_ConfigSet_loc"] = f" / {i}"
    ase.io.write(tmp_path / "in.xyz", structures, format="extxyz")
    assert run_frames(tmp_path / "in.xyz", out, markers) == 4
    first = out.read_bytes()

    # the same bytes: reused, and the output is a byte copy
    assert run_frames(tmp_path / "in.xyz", out, markers) == 0
    assert out.read_bytes() == first

    # the same frames in another order, each with its location stored: all reused
    ase.io.write(tmp_path / "moved.xyz", [structures[i] for i in (2, 0, 3, 1)], format="extxyz")
    moved_out = tmp_path / "moved_out.xyz"
    journal_path(out).rename(journal_path(moved_out))
    assert run_frames(tmp_path / "moved.xyz", moved_out, markers) == 0
    assert ase.io.read(moved_out, ":")[0].info["_ConfigSet_loc"] == " / 2"

    # frames that differ only in a stored energy: those are computed again
    changed = [atoms.copy() for atoms in structures]
    for atoms, source in zip(changed, structures):
        atoms.calc = SinglePointCalculator(atoms, **source.calc.results)
    changed[1].calc.results["energy"] += 1e-9
    ase.io.write(tmp_path / "in.xyz", changed, format="extxyz")
    assert run_frames(tmp_path / "in.xyz", moved_out, markers) == 1
    assert n_computed(markers) == 5


def test_a_frame_without_stored_location_moved_elsewhere_is_reused_with_its_text_moved_there(tmp_path):
    markers, out = markers_dir(tmp_path), tmp_path / "out.xyz"
    structures = cells(3, with_results=False)
    ase.io.write(tmp_path / "in.xyz", structures, format="extxyz")
    run_frames(tmp_path / "in.xyz", out, markers)
    ase.io.write(tmp_path / "in.xyz", [cells(1, seed=9)[0], structures[2], structures[1], structures[0]],
                 format="extxyz")
    # found by its bytes; the text rendered at its old place is moved to its new one
    assert run_frames(tmp_path / "in.xyz", out, markers) == 1
    fresh = tmp_path / "fresh.xyz"
    assert run_frames(tmp_path / "in.xyz", fresh, markers_dir(tmp_path, "fresh-markers")) == 4
    assert out.read_bytes() == fresh.read_bytes()
    # the rows reused keep their text and the place it was rendered at
    assert [loc for (loc,) in db_rows(out, "SELECT loc FROM items ORDER BY idx")] == [" / 0", " / 2", " / 1", " / 0"]
    assert run_frames(tmp_path / "in.xyz", out, markers) == 0 and out.read_bytes() == fresh.read_bytes()


def db_rows(out, sql):
    with sqlite3.connect(journal_path(out)) as db:
        return db.execute(sql).fetchall()


def two_structures(atoms):
    other = atoms.copy()
    other.positions += 0.25
    return [atoms, other]


@pytest.mark.parametrize("paths, old, new", [
    ("a.xyz", (5,), (7,)), ("a.xyz", (5,), (12, 0)), ("a.xyz", (0, 5), (0, 5, 3)),
    (["a.xyz", "b.xyz"], (0, 5), (1, 7)), (["a.xyz", "b.xyz"], (1, 5, 2), (0, 3, 2)),
    (["a.xyz", "b.xyz"], (0,), (1,)),
])
@pytest.mark.parametrize("as_list", [False, True], ids=["one", "list"])
def test_a_text_moved_is_what_rendering_at_the_new_place_gives_byte_for_byte(paths, old, new, as_list):
    # the renderer decides file and written location, for the move as for rendering
    renderer = OutputSpec(paths, tags={"campaign": "x / 4"}).renderer()
    atoms = cells(1)[0]
    atoms.info["note"] = "from / 3 / 1"      # other values keep their text
    output = two_structures(atoms) if as_list else atoms
    before, after = renderer.render(output, old), renderer.render(output, new)
    (_, old_inner), (_, new_inner) = renderer.file_of(old), renderer.file_of(new)
    assert relocated(before.text, before.count, old_inner, new_inner) == after.text
    assert relocated(after.text, after.count, new_inner, old_inner) == before.text


@pytest.mark.parametrize("change", ["copied", "tag", "no_location", "foreign", "two_values", "other_key"])
def test_a_text_whose_locations_are_not_the_renderers_own_is_not_moved(change):
    renderer = OutputSpec("a.xyz").renderer()
    atoms = cells(1, with_results=False)[0]
    if change == "copied":
        atoms.info["seen_at"] = " / 5"      # what an op copying its location would leave
    text = renderer.render(two_structures(atoms), (5,)).text
    if change == "tag":
        text = OutputSpec("a.xyz", tags={"_ConfigSet_loc": " / 9"}).renderer().render(atoms, (5,)).text
    elif change == "no_location":
        text = text.replace('_ConfigSet_loc=" / 5 / 1"', "")
    elif change == "foreign":
        text = text.replace('_ConfigSet_loc=" / 5 / 1"', '_ConfigSet_loc=" / 6 / 1"')
    elif change == "two_values":
        text = text.replace('_ConfigSet_loc=" / 5 / 1"', '_ConfigSet_loc=" / 5 / 1" _ConfigSet_loc=" / 5 / 1"')
    elif change == "other_key":
        text = text.replace('_ConfigSet_loc=" / 5 / 1"', 'my_ConfigSet_loc=" / 5 / 1"')
    assert relocated(text, stored.frames_in(text), (5,), (6,)) is None
    # rendered at the top of a file there is no location to move; where nothing moves, the text stays
    assert relocated(text, stored.frames_in(text), (), (6,)) is None
    assert relocated(text, stored.frames_in(text), (5,), (5,)) == text


def test_a_changed_tag_changes_the_text_so_it_is_computed_again(tmp_path):
    markers, out = markers_dir(tmp_path), tmp_path / "out.xyz"
    ase.io.write(tmp_path / "in.xyz", cells(2, with_results=False), format="extxyz")
    run_frames(tmp_path / "in.xyz", out, markers, tags={"campaign": "a"})
    assert run_frames(tmp_path / "in.xyz", out, markers, tags={"campaign": "a"}) == 0
    assert run_frames(tmp_path / "in.xyz", out, markers, tags={"campaign": "b"}) == 2
    assert [atoms.info["campaign"] for atoms in ase.io.read(out, ":")] == ["b", "b"]


def test_frame_keys_count_the_random_stream_and_the_index_when_the_op_is_told_it(tmp_path):
    markers = markers_dir(tmp_path)
    cache, _ = cache_for(tmp_path / "out.xyz", markers)
    item = FrameItem("in.xyz", 0, 10, (0,), bytes(32))
    rng = np.random.default_rng(5)
    try:
        assert cache.key_of(0, item, None) == cache.key_of(7, item, None)
        # not its place: a stored location is in its bytes, a frame number is moved to on reuse
        assert cache.key_of(0, item, None) == cache.key_of(0, FrameItem("moved.xyz", 40, 50, (1, 3), bytes(32)), None)
        keys = {cache.key_of(0, item, None), cache.key_of(0, item, rng), cache.key_of(0, item, rng.spawn(1)[0]),
                cache.key_of(0, FrameItem("other.xyz", 5, 15, (0,), bytes(31) + b"\1"), None)}
        assert len(keys) == 4
        assert cache.key_of(0, item, np.random.default_rng(5)) == cache.key_of(0, item, np.random.default_rng(5))
        with pytest.raises(ValueError, match="was not hashed"):
            cache.key_of(0, FrameItem("in.xyz", 0, 10, (0,)), None)
    finally:
        cache.close()


# --- 4. a run killed at any moment resumes to the same bytes ----------------------------------------

def test_a_run_killed_midway_resumes_to_the_byte_identical_output(tmp_path):
    structures = cells(6)
    ase.io.write(tmp_path / "in.xyz", structures, format="extxyz")
    fresh_markers = markers_dir(tmp_path, "fresh-markers")
    run_frames(tmp_path / "in.xyz", tmp_path / "fresh.xyz", fresh_markers)

    markers, out, gate = markers_dir(tmp_path), tmp_path / "out.xyz", tmp_path / "gate"
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS_DIR)!r})
        from test_journal_text import run_frames
        run_frames({str(tmp_path / 'in.xyz')!r}, {str(out)!r}, {str(markers)!r}, gate={str(gate)!r}, stop_after=3)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=driver_env(), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: Path(f"{gate}.waiting-half").exists() or proc.poll() is not None, 120), \
            "the driver never reached the gate"
        assert proc.poll() is None, proc.stdout.read().decode()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        end_process_group(proc)
    assert not out.exists() and n_computed(markers) == 3

    assert run_frames(tmp_path / "in.xyz", out, markers) == 3
    assert out.read_bytes() == (tmp_path / "fresh.xyz").read_bytes()
    assert [form for _, form, *_ in rows(out)] == [stored.ZLIB] * 6


def test_status_reads_a_journal_of_text(tmp_path, capsys):
    markers, out = markers_dir(tmp_path), tmp_path / "out.xyz"
    ase.io.write(tmp_path / "in.xyz", cells(3), format="extxyz")
    run_frames(tmp_path / "in.xyz", out, markers)
    assert cli_main(["status", str(out)]) == 0
    assert "3 done, 0 failed" in capsys.readouterr().out


# --- 5. older journals are started afresh -------------------------------------------------------------

OLDER_ITEMS = {2: "output TEXT,",
               # format 3: texts without the location they were rendered at (keyed by it)
               3: "form TEXT, output, file_i INTEGER, count INTEGER, size INTEGER,"}


@pytest.mark.parametrize("older", [2, 3])
def test_a_journal_of_an_older_format_is_started_afresh_with_a_log_line(tmp_path, caplog, capsys, older):
    inputs, out, markers = tmp_path / "in.xyz", tmp_path / "out.xyz", markers_dir(tmp_path)
    ase.io.write(inputs, cells(2, with_results=False), format="extxyz")
    with sqlite3.connect(journal_path(out)) as db:      # an older format's tables
        db.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                         "CREATE TABLE items (key TEXT PRIMARY KEY, idx INTEGER NOT NULL, run INTEGER NOT NULL,"
                         f" status TEXT NOT NULL, {OLDER_ITEMS[older]} reason TEXT, traceback TEXT);"
                         f"INSERT INTO meta VALUES ('format', '{older}');")
    assert cli_main(["status", str(out)]) == 2
    assert f"older format (format {older})" in capsys.readouterr().err
    caplog.set_level(logging.INFO, logger="wfl_like.cache")

    autoparallelize(value_op, ConfigSet(inputs), OutputSpec(out), markers,
                    autopara_info={"num_python_subprocesses": 0})

    assert f"older format (format {older})" in caplog.text and str(journal_path(out)) in caplog.text
    assert n_computed(markers) == 2
    with Journal(journal_path(out), read_only=True) as journal:
        assert journal.meta("format") == FORMAT and journal.counts() == {"done": 2, "failed": 0}


# --- 6. one answer to "may these outputs be written, or reused?" ---------------------------------------

@pytest.mark.parametrize("in_files, overwrite, all_written, record, reuse, replace", [
    (False, False, False, None, None, False),
    (True, True, True, ownership.JournalRecord(True, True, True), None, True),
    (True, False, False, ownership.JournalRecord(True, True, False), None, True),
    (True, False, False, None, None, False),
    (True, False, True, None, ownership.EXIST, False),
    (True, False, True, ownership.JournalRecord(False, False, False), ownership.FOREIGN, False),
    (True, False, True, ownership.JournalRecord(True, True, True), ownership.UNCHANGED, False),
    (True, False, True, ownership.JournalRecord(True, True, False), None, True),
    (True, False, True, ownership.JournalRecord(True, False, False), None, False),
])
def test_the_plan_for_outputs(in_files, overwrite, all_written, record, reuse, replace):
    plan = ownership.plan_run(in_files, overwrite, all_written, record)
    assert (plan.reuse, plan.replace_existing) == (reuse, replace)
    if reuse is not None:
        assert "op_x" in plan.message("op_x", ["a.xyz"]) and "a.xyz" in plan.message("op_x", ["a.xyz"])
    else:
        with pytest.raises(ValueError):
            plan.message("op_x", [])


def test_outputspec_plans_from_its_files(tmp_path):
    out = OutputSpec(tmp_path / "o.xyz")
    assert out.plan_run().reuse is None
    (tmp_path / "o.xyz").write_text("")
    assert out.plan_run().reuse == ownership.EXIST
    assert OutputSpec(tmp_path / "o.xyz", overwrite=True).plan_run().reuse is None
    assert OutputSpec().plan_run().reuse is None


def test_looking_up_many_items_at_once_answers_as_one_at_a_time(tmp_path):
    """Done, failed, moved, changed and new items, keys twice in one window, and more keys
    than one query takes: each answer as the one-item lookup gives it."""
    from wfl_like.errors import FailedItem

    def frame(i):
        return f"1\nProperties=species:S:1:pos:R:3 label={i}\nH 0.0 0.0 {i}.0\n"

    journal = Journal(tmp_path / "journal.sqlite")
    try:
        journal.start("call", {"op": "test"})
        done = [(i, f"key{i}", stored.at_location(stored.pack(RenderedOutput(0, frame(i) * (1 + i % 3), 1 + i % 3)),
                                                   (i,)))
                for i in range(0, 1300, 2)]
        failed = [(i, f"key{i}", FailedItem(i, "ValueError: no")) for i in range(1, 1300, 6)]
        journal.record(done=done, failed=failed)
        journal.start("call", {"op": "test"})     # a second run: misses may now be changed items
        indices = list(range(1400))
        # most keys at their own place; some moved to another index, some never seen, one asked twice
        keys = [f"key{i}" if i % 5 else f"key{(i + 2) % 1400}" for i in indices]
        keys[7] = keys[8] = "key8"
        keys[1399] = "never"
        many = journal.lookup_many(indices, keys, n_files=1)
        one_by_one = [journal.lookup(index, key, n_files=1) for index, key in zip(indices, keys)]
    finally:
        journal.close()
    assert many == one_by_one
    assert {found for found, _, _, _ in many} == {True, False}
    assert {changed for found, _, changed, _ in many if not found} == {True, False}
