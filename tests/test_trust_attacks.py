"""What an attack on the change for issue 8 broke, each kept as a test: state an op writes in
a helper module, numpy scalars as arguments, tampered journal values, outputs in memory that
are not structures, a full disk under the journal, status on read-only media after a kill.

Real files, real driver processes, real (tmpfs) mounts where the test needs one.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms

from helpers import driver_env, end_process_group, wait_for
from wfl_like import AutoparaInfo, ConfigSet, OutputSpec
from wfl_like.autoparallelize import autoparallelize
from wfl_like.autoparallelize.resume.fingerprint import fingerprint_call
from wfl_like.autoparallelize.resume.journal import Journal, journal_path
from wfl_like.cli import main as cli_main
from wfl_like.errors import AutoparallelizeError, FailedItemsWarning, JournalError

N_ITEMS = 3


@pytest.fixture(autouse=True)
def _no_worker_env(monkeypatch):
    monkeypatch.delenv("WFL_NUM_PYTHON_SUBPROCESSES", raising=False)
    monkeypatch.delenv("WFL_LIKE_START_METHOD", raising=False)


def serial(**more):
    return AutoparaInfo(num_python_subprocesses=0, **more)


def write_inputs(path, n=N_ITEMS):
    ase.io.write(path, [Atoms("H2", positions=[[0, 0, 0], [0, 0, 1 + 0.1 * i]]) for i in range(n)],
                 format="extxyz")
    return path


def marking_op(atoms_list, markers):
    for atoms in atoms_list:
        Path(markers, uuid.uuid4().hex).touch()
        atoms.info["v"] = 1.5
    return atoms_list


@pytest.fixture
def markers(tmp_path):
    directory = tmp_path / "markers"
    directory.mkdir()
    return directory


def n_computed(markers):
    return len(list(markers.iterdir()))


def mount_tmpfs(directory, size):
    directory.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({result.stderr.strip()}); run as root to test this")


def unmount(directory):
    subprocess.run(["umount", "-l", str(directory)], capture_output=True)


# --- the key -----------------------------------------------------------------------------------

HELPERS = "SCALE = 1.0\nCACHE = {}\n\n\ndef compute(x):\n    return x * SCALE\n"
DRIVER = textwrap.dedent("""
    import ase.io
    from wfl_like import ConfigSet, OutputSpec
    from wfl_like.autoparallelize import autoparallelized
    import helpers

    @autoparallelized()
    def op(atoms_list):
        for atoms in atoms_list:
            helpers.CACHE[len(atoms)] = True     # the op keeps state in the helper module
            atoms.info["val"] = helpers.compute(1.0)
        return atoms_list

    op(ConfigSet("in.xyz"), OutputSpec("out.xyz"))
""")


def test_state_an_op_keeps_in_a_helper_module_counts_by_that_modules_source(tmp_path):
    write_inputs(tmp_path / "in.xyz", 2)
    (tmp_path / "driver.py").write_text(DRIVER)

    def run(helpers):
        (tmp_path / "helpers.py").write_text(helpers)
        env = driver_env(PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(tmp_path))
        result = subprocess.run([sys.executable, "driver.py"], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=180)
        assert result.returncode == 0, result.stderr
        return [float(atoms.info["val"]) for atoms in ase.io.read(tmp_path / "out.xyz", ":")]

    assert run(HELPERS) == [1.0, 1.0]
    assert run(HELPERS.replace("SCALE = 1.0", "SCALE = 2.0")) == [2.0, 2.0]
    assert run(HELPERS.replace("SCALE = 1.0", "SCALE = 2.0").replace("x * SCALE", "x * SCALE * 100")) \
        == [200.0, 200.0]


def times_op(atoms_list, factor):
    return atoms_list


def test_numpy_scalar_arguments_count_by_their_dtype():
    # numpy.int8(100) * 3 wraps around where 100 * 3 does not: they must not share a key
    keys = {fingerprint_call(times_op, (value,), {}) for value in (100, np.int8(100), np.int64(100), 100.0,
                                                                     np.float32(100.0))}
    assert len(keys) == 5


# --- tampered journals -------------------------------------------------------------------------

def objects_journaled(**more):
    """Serial, with the driver reading the inputs: the journal keeps outputs in the codec's format
    (the workers' text of file outputs is kept as text, not JSON)."""
    return serial(workers_read_files=False, **more)


def tamper(journal, change):
    """Apply ``change`` to the JSON of every stored output."""
    db = sqlite3.connect(journal)
    for key, text in db.execute("SELECT key, output FROM items").fetchall():
        node = json.loads(text)
        change(node)
        db.execute("UPDATE items SET output=? WHERE key=?", (json.dumps(node), key))
    db.commit()
    db.close()


def test_atomic_numbers_out_of_range_in_a_journal_are_refused(tmp_path, markers):
    inputs, out = write_inputs(tmp_path / "in.xyz"), tmp_path / "out.xyz"
    autoparallelize(marking_op, ConfigSet(inputs), OutputSpec(out), markers, autopara_info=objects_journaled())
    negative = np.array([-5, 1], dtype="<i8").tobytes()
    import base64

    tamper(journal_path(out), lambda node: node["numbers"].update(b64=base64.b64encode(negative).decode()))
    out.unlink()
    with pytest.raises(JournalError, match="atomic numbers"):
        autoparallelize(marking_op, ConfigSet(inputs), OutputSpec(out), markers, autopara_info=objects_journaled())
    assert not out.exists()


def test_a_reused_output_that_cannot_be_written_is_recomputed_by_the_next_run(tmp_path, markers):
    inputs, out = write_inputs(tmp_path / "in.xyz"), tmp_path / "out.xyz"
    autoparallelize(marking_op, ConfigSet(inputs), OutputSpec(out), markers, autopara_info=objects_journaled())
    first = out.read_bytes()
    # an info key that is not a string: the file cannot hold it
    tamper(journal_path(out), lambda node: node["info"]["items"].append([3, 1]))
    out.unlink()
    with pytest.raises(AutoparallelizeError) as raised:
        autoparallelize(marking_op, ConfigSet(inputs), OutputSpec(out), markers, autopara_info=objects_journaled())
    assert [failure.index for failure in raised.value.failures] == list(range(N_ITEMS))
    assert n_computed(markers) == N_ITEMS          # nothing was run: those outputs came from the journal
    autoparallelize(marking_op, ConfigSet(inputs), OutputSpec(out), markers, autopara_info=objects_journaled())
    assert n_computed(markers) == 2 * N_ITEMS      # recomputed, not reused again
    assert out.read_bytes() == first


# --- outputs -----------------------------------------------------------------------------------

def number_op(atoms_list):
    return [atoms if i % 2 else 5 for i, atoms in enumerate(atoms_list)]


def test_an_output_in_memory_that_is_not_a_structure_is_a_failed_item_never_journaled(tmp_path):
    inputs = write_inputs(tmp_path / "in.xyz", 4)
    journal = tmp_path / "memory.sqlite"
    for _ in range(2):       # the rerun finds nothing bad journaled as done
        with pytest.warns(FailedItemsWarning):
            result = autoparallelize(number_op, ConfigSet(inputs), OutputSpec(), autopara_info=serial(
                errors="skip", num_inputs_per_python_subprocess=4, cache=journal))
        assert [failure.index for failure in result.failures] == [0, 2]
        assert all("OpOutputError" in failure.reason for failure in result.failures)
        assert len(list(result)) == 2


# --- the journal's medium ----------------------------------------------------------------------

def test_a_full_disk_under_the_journal_says_so_and_keeps_the_journal(tmp_path, capsys):
    media = tmp_path / "media"
    mount_tmpfs(media, "64k")
    try:
        from ase.build import bulk

        ase.io.write(tmp_path / "in.xyz", [bulk("Cu", cubic=True).repeat(2) for _ in range(40)], format="extxyz")
        code = cli_main(["calculate", str(tmp_path / "in.xyz"), "-o", str(media / "o.xyz"), "-q"])
        err = capsys.readouterr().err
        assert code == 1 and len(err.strip().splitlines()) == 1, err
        assert "free space" in err and "overwrite" not in err, err
        assert not list(media.glob(".o.xyz.partial"))
    finally:
        unmount(media)


SLOW_DRIVER = textwrap.dedent("""
    import sys, time
    from ase import Atoms
    from wfl_like import ConfigSet, OutputSpec
    from wfl_like.autoparallelize import autoparallelize

    def slow_op(atoms_list):
        for atoms in atoms_list:
            if atoms.info["i"] >= 3:
                open(sys.argv[2], "w").close()      # items before it are journaled: kill me now
                time.sleep(600)
        return atoms_list

    inputs = [Atoms("H", info={"i": i}) for i in range(6)]
    autoparallelize(slow_op, ConfigSet(inputs), OutputSpec(sys.argv[1]),
                    autopara_info={"num_python_subprocesses": 0})
""")


def test_status_on_read_only_media_after_a_kill_reads_what_the_run_journaled(tmp_path, capsys):
    media = tmp_path / "media"
    mount_tmpfs(media, "4m")
    proc = None
    try:
        (tmp_path / "driver.py").write_text(SLOW_DRIVER)
        reached = tmp_path / "reached"
        proc = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(media / "o.xyz"), str(reached)],
                                env=driver_env(), start_new_session=True)
        assert wait_for(reached.exists, timeout=120)
        os.kill(proc.pid, signal.SIGKILL)       # no checkpoint: the items are in the write-ahead log
        proc.wait()
        assert Path(str(journal_path(media / "o.xyz")) + "-wal").exists()
        assert cli_main(["status", str(media / "o.xyz")]) == 0
        writable = capsys.readouterr().out
        done = int(writable.split("items:")[1].split()[0])
        assert done >= 1, writable          # what was journaled before the kill
        subprocess.run(["mount", "-o", "remount,ro", str(media)], check=True)
        assert cli_main(["status", str(media / "o.xyz")]) == 0
        assert capsys.readouterr().out == writable
        with Journal(journal_path(media / "o.xyz"), read_only=True) as journal:
            assert journal.counts()["done"] == done
    finally:
        if proc is not None:
            end_process_group(proc)
        unmount(media)


def test_command_line_output_naming_its_input_is_bad_input(tmp_path, capsys):
    inputs = write_inputs(tmp_path / "in.xyz")
    before = inputs.read_bytes()
    assert cli_main(["calculate", str(inputs), "-o", str(inputs), "-q"]) == 2
    err = capsys.readouterr().err
    assert "is also an input" in err and len(err.strip().splitlines()) == 1, err
    assert inputs.read_bytes() == before


@pytest.mark.parametrize("key, value", [("run", str(10 ** 20)), ("run", str(2 ** 63 - 1)),
                                        ("call", "[" * 100000 + "]" * 100000), ("n_items", "-7"),
                                        ("failed", "50")])
def test_impossible_record_values_in_a_journal_are_clear_errors_and_overwrite_recovers(tmp_path, markers, capsys,
                                                                                         key, value):
    inputs, out = write_inputs(tmp_path / "in.xyz"), tmp_path / "out.xyz"
    autoparallelize(marking_op, ConfigSet(inputs), OutputSpec(out), markers, autopara_info=serial())
    first = out.read_bytes()
    db = sqlite3.connect(journal_path(out))
    db.execute("UPDATE meta SET value=? WHERE key=?", (value, key))
    db.commit()
    db.close()
    assert cli_main(["status", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(journal_path(out)) in err and len(err.strip().splitlines()) == 1, err
    autoparallelize(marking_op, ConfigSet(inputs), OutputSpec(out, overwrite=True), markers, autopara_info=serial())
    assert out.read_bytes() == first


def text_op(atoms_list):
    for atoms in atoms_list:
        atoms.info["labels"] = np.array(["ab", "c"])
    return atoms_list


def test_text_that_holds_no_characters_in_a_journal_is_refused(tmp_path):
    import base64

    inputs, out = write_inputs(tmp_path / "in.xyz"), tmp_path / "out.xyz"
    autoparallelize(text_op, ConfigSet(inputs), OutputSpec(out), autopara_info=objects_journaled())

    def garble(node):
        for pair in node["info"]["items"]:
            if pair[0] == "labels":
                pair[1]["b64"] = base64.b64encode(b"\xff" * 16).decode()

    tamper(journal_path(out), garble)
    out.unlink()
    with pytest.raises(JournalError, match="no characters"):
        autoparallelize(text_op, ConfigSet(inputs), OutputSpec(out), autopara_info=objects_journaled())


def failing_op(atoms_list):
    raise ValueError("this item fails")


def test_status_cuts_a_huge_reason_read_from_the_journal(tmp_path, capsys):
    inputs, out = write_inputs(tmp_path / "in.xyz"), tmp_path / "out.xyz"
    with pytest.raises(AutoparallelizeError):
        autoparallelize(failing_op, ConfigSet(inputs), OutputSpec(out), autopara_info=serial())
    db = sqlite3.connect(journal_path(out))
    db.execute("UPDATE items SET reason=?", ("x" * 5_000_000,))
    db.commit()
    db.close()
    assert cli_main(["status", str(out)]) == 0
    printed = capsys.readouterr().out
    assert max(len(line) for line in printed.splitlines()) < 1000
