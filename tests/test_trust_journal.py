"""Trusting the journal (issue 8): no code from a journal, clear errors for a bad one, keys by
content, everything that changes the written bytes or the random streams in the
"nothing changed" check, and a lock file that cannot admit two holders.

Real files, real driver processes killed with SIGKILL; no mocks.  Operations count their
work with marker files, one per item computed.
"""

import functools
import logging
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid
import warnings
from collections import Counter
from fractions import Fraction
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms

from helpers import driver_env, end_process_group, wait_for, waiting_at
from wfl_like import AutoparaInfo, ConfigSet, OutputSpec
from wfl_like.autoparallelize import autoparallelize
from wfl_like.autoparallelize.resume.journal import Journal, journal_path
from wfl_like.io.locking import lock_opened
from wfl_like.cli import main as cli_main
from wfl_like.errors import JournalError, OutputLockedError

TESTS_DIR = Path(__file__).resolve().parent
N_ITEMS = 6


# --- operations (module level: driver scripts import them) --------------------------------------

def counting_op(atoms_list, markers):
    """Marks each item computed; its output depends on the item's content only."""
    for atoms in atoms_list:
        Path(markers, f"{atoms.info['label']}-{uuid.uuid4().hex}").touch()
        atoms.info["value"] = float(atoms.positions.sum())
    return atoms_list


def fraction_op(atoms_list, markers):
    """Item 1's output holds an object the journal's format cannot hold (a Fraction)."""
    for atoms in counting_op(atoms_list, markers):
        if atoms.info["label"] == 1:
            atoms.info["ratio"] = Fraction(1, 3)
    return atoms_list


def computed(markers):
    return Counter(int(p.name.split("-")[0]) for p in Path(markers).iterdir())


def structures(labels):
    return [Atoms("Cu2", positions=np.random.default_rng(label).random((2, 3)) * 3, cell=[4, 4, 4], pbc=True,
                  info={"label": label}) for label in labels]


def para(**more):
    return AutoparaInfo(num_python_subprocesses=0, num_inputs_per_python_subprocess=2, **more)


@pytest.fixture(autouse=True)
def _no_worker_env(monkeypatch):
    monkeypatch.delenv("WFL_NUM_PYTHON_SUBPROCESSES", raising=False)
    monkeypatch.delenv("WFL_LIKE_START_METHOD", raising=False)
    # the command line replaces warnings.showwarning: put it back after each test
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)


@pytest.fixture
def run(tmp_path):
    """``run(**outputspec)``: the counting op over ``in.xyz`` into ``out.xyz``; the markers."""
    markers = tmp_path / "markers"
    markers.mkdir()
    ase.io.write(tmp_path / "in.xyz", structures(range(N_ITEMS)), format="extxyz")

    def call(inputs=tmp_path / "in.xyz", out=tmp_path / "out.xyz", op=counting_op, workers_read_files=None, **spec):
        return autoparallelize(op, ConfigSet(inputs), OutputSpec(out, **spec), markers,
                               autopara_info=para(workers_read_files=workers_read_files))

    call.markers, call.out, call.inputs = markers, tmp_path / "out.xyz", tmp_path / "in.xyz"
    return call


def fresh_output(tmp_path, inputs, **spec):
    """What a run with no journal writes for ``inputs``."""
    directory = tmp_path / f"fresh-{uuid.uuid4().hex}"
    (directory / "markers").mkdir(parents=True)
    autoparallelize(counting_op, ConfigSet(inputs), OutputSpec(directory / "out.xyz", **spec), directory / "markers",
                    autopara_info=para())
    return (directory / "out.xyz").read_bytes()


def status(output, capsys):
    code = cli_main(["status", str(output)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- 7. a journal never runs code ---------------------------------------------------------------

class _CreatesFile:
    """Unpickling it creates the file ``path``: what a planted journal would do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def planted_pickle(marker):
    payload = pickle.dumps(_CreatesFile(marker))
    # the payload is live: unpickled, it creates its file
    probe = Path(f"{marker}.probe")
    pickle.loads(pickle.dumps(_CreatesFile(probe))).close()
    assert probe.exists()
    probe.unlink()
    return payload


def test_journal_whose_outputs_are_replaced_by_pickles_runs_no_code_and_overwrite_recovers(run, tmp_path, capsys):
    run()
    marker = tmp_path / "code-ran"
    with sqlite3.connect(journal_path(run.out)) as db:
        assert db.execute("SELECT COUNT(*) FROM items").fetchone()[0] == N_ITEMS
        db.execute("UPDATE items SET output=?", (planted_pickle(marker),))
    run.out.unlink()       # so the rerun reads the stored outputs

    with pytest.raises(JournalError) as error:
        run()
    assert not marker.exists()
    message = str(error.value)
    assert str(journal_path(run.out)) in message and "overwrite=True" in message
    assert not run.out.exists()
    code, out, err = status(run.out, capsys)
    assert not marker.exists()

    run(overwrite=True)
    assert not marker.exists()
    assert computed(run.markers) == Counter({label: 2 for label in range(N_ITEMS)})
    assert run.out.read_bytes() == fresh_output(tmp_path, run.inputs)


def test_journal_of_the_older_pickle_format_is_started_afresh_unread(run, tmp_path, caplog):
    marker = tmp_path / "code-ran"
    path = journal_path(run.out)
    with sqlite3.connect(path) as db:       # the tables of format 1, each output a planted pickle
        db.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                         "CREATE TABLE items (idx INTEGER PRIMARY KEY, key TEXT NOT NULL, status TEXT NOT NULL,"
                         " output BLOB, reason TEXT, traceback TEXT);")
        db.execute("INSERT INTO meta VALUES ('call_key', '\"k\"')")
        db.executemany("INSERT INTO items VALUES (?, 'k', 'done', ?, NULL, NULL)",
                       [(i, planted_pickle(marker)) for i in range(N_ITEMS)])
    caplog.set_level(logging.INFO, logger="wfl_like.cache")

    run()

    assert not marker.exists()
    assert "older format" in caplog.text and str(path) in caplog.text
    assert sum(computed(run.markers).values()) == N_ITEMS
    assert run.out.read_bytes() == fresh_output(tmp_path, run.inputs)


def _not_sqlite(path):
    path.write_bytes(b"these bytes are not an SQLite database" * 100)


def _foreign_schema(path):
    path.unlink()
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE songs (title TEXT)")


def _bad_meta_value(path):
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value='{not json' WHERE key='call_key'")


def _meta_of_another_type(path):
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value='[1, 2]' WHERE key='complete'")


def _malformed_output(path):
    with sqlite3.connect(path) as db:
        db.execute("""UPDATE items SET output='{"~": "ndarray", "dtype": "<f8", "shape": [99999999999], "b64": ""}'""")


@pytest.mark.parametrize("damage", [_not_sqlite, _foreign_schema, _bad_meta_value, _meta_of_another_type,
                                    _malformed_output])
def test_damaged_journal_is_a_clear_error_for_runs_and_status_and_overwrite_recovers(run, tmp_path, capsys,
                                                                                     damage):
    run()
    path = journal_path(run.out)
    damage(path)
    run.out.unlink()

    with pytest.raises(JournalError) as error:
        run()
    assert str(path) in str(error.value) and "overwrite=True" in str(error.value)
    assert sum(computed(run.markers).values()) == N_ITEMS
    if damage is not _malformed_output:        # status does not read the outputs
        code, out, err = status(run.out, capsys)
        assert code == 2 and out == ""
        assert len(err.strip().splitlines()) == 1 and str(path) in err, err

    run(overwrite=True)
    assert run.out.read_bytes() == fresh_output(tmp_path, run.inputs)
    code, out, err = status(run.out, capsys)
    assert code == 0 and f"{N_ITEMS} done, 0 failed, 0 pending" in out


def test_output_the_journal_cannot_hold_is_kept_and_computed_again_with_one_warning(tmp_path):
    markers, cache = tmp_path / "markers", tmp_path / "run.sqlite"
    markers.mkdir()

    def call():
        return list(autoparallelize(fraction_op, structures(range(N_ITEMS)), OutputSpec(), markers,
                                    autopara_info=para(cache=str(cache))))

    with pytest.warns(UserWarning, match="item 1 cannot be kept in the journal") as caught:
        first = call()
    assert len([w for w in caught if "cannot be kept" in str(w.message)]) == 1
    assert first[1].info["ratio"] == Fraction(1, 3)
    with pytest.warns(UserWarning, match="item 1 cannot be kept in the journal"):     # once per call
        second = call()
    assert computed(markers) == Counter({label: 2 if label == 1 else 1 for label in range(N_ITEMS)})
    assert second[1].info["ratio"] == Fraction(1, 3)
    assert [a.info["value"] for a in second] == [a.info["value"] for a in first]


def rich_op(atoms_list, markers, for_file=False):
    """Outputs carrying what a structure can carry: a calculator's results, a constraint,
    per-atom arrays of several dtypes, numpy scalars and exact floats in ``info`` (and, unless
    ``for_file``, values that extended XYZ cannot write)."""
    from ase.calculators.emt import EMT
    from ase.constraints import FixAtoms

    for atoms in counting_op(atoms_list, markers):
        atoms.calc = EMT()
        atoms.get_potential_energy()
        atoms.set_constraint(FixAtoms(indices=[0]))
        atoms.set_tags([1, 2])
        atoms.set_initial_magnetic_moments([0.5, -0.25])
        atoms.set_momenta(np.full((2, 3), 1 / 3))
        atoms.info.update(third=1 / 3, tiny=5e-324, scalar=np.float32(0.1), count=np.int64(7), flag=True,
                          name="Cu\u00e9", vector=np.array([1 / 7, 2 / 7]))
        if not for_file:
            atoms.info.update(ratio=1 + 2j, pair=(1, "x"), raw=b"\x00\xff", nested={"a": [1, None], 3: 4.5})
    return atoms_list


def _summary(atoms):
    """Everything an output holds, types included, for an exact comparison."""
    return (type(atoms), atoms.numbers.tolist(), atoms.positions.tobytes(), atoms.cell.array.tobytes(),
            atoms.pbc.tolist(), atoms.get_celldisp().tobytes(),
            [(k, type(v), repr(v)) for k, v in atoms.info.items()],
            [(k, v.dtype.str, v.tobytes()) for k, v in atoms.arrays.items()],
            [c.todict() for c in atoms.constraints].__repr__(),
            [(k, repr(v)) for k, v in atoms.calc.results.items()])


def test_outputs_reused_from_the_journal_are_exactly_the_computed_ones(tmp_path):
    markers, cache = tmp_path / "markers", tmp_path / "run.sqlite"
    markers.mkdir()

    def call():
        return list(autoparallelize(rich_op, structures(range(3)), OutputSpec(), markers,
                                    autopara_info=para(cache=str(cache))))

    computed_outputs, reused_outputs = call(), call()
    assert sum(computed(markers).values()) == 3
    assert [_summary(a) for a in reused_outputs] == [_summary(a) for a in computed_outputs]


def test_output_file_rebuilt_from_the_journal_is_byte_identical(run, tmp_path):
    ase.io.write(run.inputs, structures(range(3)), format="extxyz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # every value is written, none skipped
        run(op=functools.partial(rich_op, for_file=True))
    written = run.out.read_bytes()
    run.out.unlink()
    run(op=functools.partial(rich_op, for_file=True))
    assert sum(computed(run.markers).values()) == 3
    assert run.out.read_bytes() == written


# --- 17. keys by content: an insertion computes the new item only -----------------------------------

@pytest.mark.parametrize("workers_read_files", [False, True], ids=["objects", "frames"])
def test_inserting_a_structure_at_the_start_computes_only_it_and_dropped_items_leave(run, tmp_path, capsys,
                                                                                     workers_read_files):
    # the driver reading the inputs, the journal keeps objects, stored at their new place; the
    # workers reading them, it keeps their text, moved to the new place
    run(workers_read_files=workers_read_files)
    ase.io.write(run.inputs, structures([99, *range(N_ITEMS)]), format="extxyz")

    run(workers_read_files=workers_read_files)

    assert computed(run.markers) == Counter({99: 1, **{label: 1 for label in range(N_ITEMS)}})
    assert run.out.read_bytes() == fresh_output(tmp_path, run.inputs)
    code, out, _ = status(run.out, capsys)
    assert code == 0 and f"{N_ITEMS + 1} done, 0 failed, 0 pending" in out

    # items no longer in the input are dropped from the journal at the end of the run
    ase.io.write(run.inputs, structures([3, 99]), format="extxyz")
    run(workers_read_files=workers_read_files)
    assert sum(computed(run.markers).values()) == N_ITEMS + 1
    with sqlite3.connect(journal_path(run.out)) as db:
        assert db.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 2
    assert run.out.read_bytes() == fresh_output(tmp_path, run.inputs)


def test_frames_moved_without_stored_locations_are_reused_at_their_new_place_on_the_frames_path(run, tmp_path):
    # the workers' text holds each output's location: reused elsewhere, it is moved there
    run()
    ase.io.write(run.inputs, structures([*range(N_ITEMS)][::-1]), format="extxyz")
    run()
    assert computed(run.markers) == Counter({label: 1 for label in range(N_ITEMS)})
    assert run.out.read_bytes() == fresh_output(tmp_path, run.inputs)
    run()
    assert sum(computed(run.markers).values()) == N_ITEMS


# --- 3. what changes the written bytes is part of "nothing changed" ----------------------------------

@pytest.mark.parametrize("workers_read_files", [False, True], ids=["objects", "frames"])
def test_changed_tags_or_write_arguments_rewrite_the_outputs_from_the_journal(run, tmp_path, workers_read_files):
    # journaled as objects (the driver reads the inputs), outputs are rendered again; journaled as
    # the workers' text, what decides that text is part of the key: they are computed again
    per_run = 0 if not workers_read_files else N_ITEMS
    run(tags={"campaign": "a"}, workers_read_files=workers_read_files)
    assert [a.info["campaign"] for a in ase.io.read(run.out, ":")] == ["a"] * N_ITEMS

    run(tags={"campaign": "b"}, workers_read_files=workers_read_files)
    assert sum(computed(run.markers).values()) == N_ITEMS + per_run
    assert run.out.read_bytes() == fresh_output(tmp_path, run.inputs, tags={"campaign": "b"})

    run(tags={"campaign": "b"}, write_kwargs={"columns": ["symbols", "positions"]},
        workers_read_files=workers_read_files)
    assert sum(computed(run.markers).values()) == N_ITEMS + 2 * per_run
    assert run.out.read_bytes() == fresh_output(tmp_path, run.inputs, tags={"campaign": "b"},
                                                write_kwargs={"columns": ["symbols", "positions"]})


# --- 4. the caller's rng advances once per call, whatever the call does ------------------------------

def test_another_seed_is_never_nothing_changed(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    ase.io.write(tmp_path / "in.xyz", structures(range(N_ITEMS)), format="extxyz")
    draws = []
    for seed in (1, 2):
        autoparallelize(drawing_op, ConfigSet(tmp_path / "in.xyz"), OutputSpec(tmp_path / "out.xyz"), str(markers),
                        "", rng=np.random.default_rng(seed), autopara_info=para())
        draws.append([a.info["draw"] for a in ase.io.read(tmp_path / "out.xyz", ":")])
    assert sum(computed(markers).values()) == 2 * N_ITEMS
    assert draws[0] != draws[1]


def drawing_op(atoms_list, markers, release, _autopara_per_item_info):
    """Draws from each item's generator; items labelled 2 or more wait for ``release``
    (when given), so a run can be killed there."""
    from helpers import wait_for_release

    for atoms, info in zip(atoms_list, _autopara_per_item_info):
        Path(markers, f"{atoms.info['label']}-{uuid.uuid4().hex}").touch()
        if release and atoms.info["label"] >= 2:
            wait_for_release(release, atoms.info["label"])
        atoms.info["draw"] = float(info["rng"].random())
    return atoms_list


THREE_STEPS = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    from test_trust_journal import drawing_op, para
    from wfl_like import ConfigSet, OutputSpec
    from wfl_like.autoparallelize import autoparallelize

    directory, gates = sys.argv[2], sys.argv[3:6]
    rng = np.random.default_rng(42)
    source = f"{directory}/in.xyz"
    for step, gate in enumerate(gates, start=1):
        out = f"{directory}/step{step}.xyz"
        autoparallelize(drawing_op, ConfigSet(source), OutputSpec(out), f"{directory}/markers", gate, rng=rng,
                        autopara_info=para())
        source = out
""")


@pytest.mark.timeout(600)
def test_three_steps_sharing_one_rng_killed_in_any_step_or_missing_a_step_rerun_to_the_same_outputs(tmp_path):
    script = tmp_path / "three_steps.py"
    script.write_text(THREE_STEPS)
    # the gates are op arguments (part of the key): the same three paths in every run
    gates = [tmp_path / f"release{step}" for step in (1, 2, 3)]

    def start(directory):
        return subprocess.Popen([sys.executable, str(script), str(TESTS_DIR), str(directory), *map(str, gates)],
                                env=driver_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)

    def finish(directory):
        proc = start(directory)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr

    def prepare(name):
        directory = tmp_path / name
        (directory / "markers").mkdir(parents=True)
        ase.io.write(directory / "in.xyz", structures(range(4)), format="extxyz")
        return directory

    for gate in gates:
        gate.touch()
    reference = prepare("reference")
    finish(reference)
    expected = (reference / "step3.xyz").read_bytes()

    for killed_step in (1, 2, 3):
        for step, gate in enumerate(gates, start=1):
            gate.unlink(missing_ok=True)
            if step < killed_step:
                gate.touch()
        directory = prepare(f"killed-in-{killed_step}")
        proc = start(directory)
        try:
            blocked = gates[killed_step - 1]
            started = wait_for(lambda blocked=blocked, proc=proc: waiting_at(blocked) or proc.poll() is not None, 60)
            assert started, "the step never started"
            assert proc.poll() is None, proc.stderr.read()
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            end_process_group(proc)
        assert not (directory / f"step{killed_step}.xyz").exists()
        for gate in gates:
            gate.touch()
        finish(directory)
        assert (directory / "step3.xyz").read_bytes() == expected, f"killed in step {killed_step}"

    # a step's output deleted: the rerun rebuilds it from its journal, and the steps after
    # it are handed the same streams
    (reference / "step2.xyz").unlink()
    finish(reference)
    assert (reference / "step3.xyz").read_bytes() == expected
    assert sum(computed(reference / "markers").values()) == 3 * 4


# --- 14. the journal's lock file --------------------------------------------------------------------

def test_a_lock_taken_on_a_lock_file_no_longer_at_its_path_is_not_held(tmp_path):
    path = journal_path(tmp_path / "out.xyz")
    lock_file = path.with_name(path.name + ".lock")
    first = Journal(path)
    # a second process opens the lock file, and is slow to lock it ...
    opened_early = os.open(lock_file, os.O_RDWR)
    # ... while the first holder finishes (and removes the file) and a third one starts
    first.close()
    third = Journal(path)
    try:
        # the file opened early is free to lock, but no longer the lock file: not held
        assert lock_opened(opened_early, lock_file) is None
        with pytest.raises(OutputLockedError):
            Journal(path)
    finally:
        os.close(opened_early)
        third.close()
    assert not lock_file.exists()


# --- 17. a journal on read-only media -----------------------------------------------------------------

@pytest.fixture
def small_tmpfs(tmp_path):
    """``(directory, remount_read_only)``: a tmpfs mounted at ``tmp_path / "media"``, and what makes
    it read-only."""
    media = tmp_path / "media"
    media.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(media)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not allowed here (root in CI): {mounted.stderr.strip()}")

    def remount_read_only():
        subprocess.run(["mount", "-o", "remount,ro", str(media)], check=True)

    try:
        yield media, remount_read_only
    finally:
        subprocess.run(["umount", "-l", str(media)], check=False)


def test_journal_on_read_only_media_is_a_clear_error_and_status_still_reads_it(run, small_tmpfs, capsys):
    media, remount_read_only = small_tmpfs
    out = media / "out.xyz"
    run(out=out)
    written = out.read_bytes()
    remount_read_only()

    with pytest.raises(PermissionError) as error:
        run(out=out)
    message = str(error.value)
    assert str(journal_path(out)) in message and "Read-only file system" in message
    assert "cache=False" in message
    # what the message offers works: without a journal, the complete outputs are reused
    result = autoparallelize(counting_op, ConfigSet(run.inputs), OutputSpec(out), run.markers,
                             autopara_info=para(cache=False))
    assert len(list(result)) == N_ITEMS and out.read_bytes() == written
    assert sum(computed(run.markers).values()) == N_ITEMS

    code, printed, err = status(out, capsys)
    assert code == 0, err
    assert "(complete)" in printed and f"{N_ITEMS} done, 0 failed, 0 pending" in printed


@pytest.mark.parametrize("reuse", ["foreign outputs", "cache=False"])
def test_a_call_reusing_outputs_without_a_journal_still_advances_the_rng(tmp_path, reuse):
    markers = tmp_path / "markers"
    markers.mkdir()
    ase.io.write(tmp_path / "in.xyz", structures(range(3)), format="extxyz")
    first_info = para(cache=False) if reuse == "cache=False" else para()

    def script():
        """Two calls sharing one generator: the second one's draws."""
        rng = np.random.default_rng(3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")       # "could not be checked": foreign outputs on purpose
            autoparallelize(drawing_op, ConfigSet(tmp_path / "in.xyz"), OutputSpec(tmp_path / "first.xyz"),
                            str(markers), "", rng=rng, autopara_info=first_info)
        second = autoparallelize(drawing_op, structures(range(3)), OutputSpec(), str(markers), "", rng=rng,
                                 autopara_info=para())
        return [atoms.info["draw"] for atoms in second]

    computing = script()
    journal_path(tmp_path / "first.xyz").unlink(missing_ok=True)     # its outputs are now foreign
    reusing = script()
    assert sum(computed(markers).values()) == 3 + 2 * 3      # the first call computed once only
    assert reusing == computing


# --- found in review ------------------------------------------------------------------------------

_LOADED = {}


def load_scale(scale):
    """An initializer: what the op computes with is set up here, as a model loader would."""
    _LOADED["scale"] = scale


def scaled_op(atoms_list, markers):
    for atoms in counting_op(atoms_list, markers):
        atoms.info["value"] *= _LOADED["scale"]
    return atoms_list


def test_a_changed_initializer_argument_recomputes(run, tmp_path):
    def call(scale):
        info = para(initializer=(load_scale, (scale,)))
        return autoparallelize(scaled_op, ConfigSet(run.inputs), OutputSpec(run.out), run.markers, autopara_info=info)

    first = [atoms.info["value"] for atoms in call(1.0)]
    assert sum(computed(run.markers).values()) == N_ITEMS
    again = [atoms.info["value"] for atoms in call(1.0)]
    assert again == first and sum(computed(run.markers).values()) == N_ITEMS      # reused
    doubled = [atoms.info["value"] for atoms in call(2.0)]
    assert doubled == [2 * value for value in first]
    assert sum(computed(run.markers).values()) == 2 * N_ITEMS


def test_a_trigger_planted_in_a_journal_is_refused_and_overwrite_recovers(run, capsys):
    run()
    db = sqlite3.connect(journal_path(run.out))
    db.execute("CREATE TRIGGER poison AFTER INSERT ON items BEGIN UPDATE items SET output = NULL; END")
    db.commit()
    db.close()
    run.out.unlink()          # a rerun must write, so it records items
    with pytest.raises(JournalError, match="trigger poison"):
        run()
    code, out, err = status(run.out, capsys)
    assert code == 2 and "trigger poison" in err and len(err.strip().splitlines()) == 1
    run(overwrite=True)
    assert run.out.read_bytes() == fresh_output(run.out.parent, run.inputs)


def test_an_output_sharing_a_journal_does_not_replace_a_file_it_did_not_write(run, tmp_path):
    shared = tmp_path / "shared.sqlite"
    first = tmp_path / "first.xyz"
    autoparallelize(counting_op, ConfigSet(run.inputs), OutputSpec(first), run.markers,
                    autopara_info=para(cache=shared))
    foreign = tmp_path / "foreign.xyz"
    foreign.write_text("written by someone else\n")
    with pytest.raises(FileExistsError, match="foreign.xyz"):
        autoparallelize(counting_op, ConfigSet(run.inputs), OutputSpec(foreign), run.markers,
                        autopara_info=para(cache=shared))
    assert foreign.read_text() == "written by someone else\n"


class _ResultsRaise:
    """Looks like a calculator to the journal's codec, but its results cannot be read."""

    @property
    def results(self):
        raise AttributeError("no results here")


def odd_calculator_op(atoms_list, markers):
    for atoms in counting_op(atoms_list, markers):
        atoms.calc = _ResultsRaise()
    return atoms_list


def test_an_output_the_codec_trips_on_is_kept_and_only_left_out_of_the_journal(run, tmp_path):
    with pytest.warns(UserWarning, match="journal"):
        result = autoparallelize(odd_calculator_op, ConfigSet(run.inputs), OutputSpec(), run.markers,
                                 autopara_info=para(cache=tmp_path / "memory.sqlite"))
    assert len(list(result)) == N_ITEMS
