"""Outputs that can be trusted: read back, locked, never over an input; clear errors at the edges.

Real worker processes, real files, real signals and a real full file system (a small
tmpfs, where mounting is allowed).
"""

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms

from helpers import driver_env, wait_for
from wfl_like import ConfigSet, OutputSpec
from wfl_like.autoparallelize import autoparallelize
from wfl_like.autoparallelize.resume.journal import Journal, journal_path
from wfl_like.calculators.generic import calculate
from wfl_like.errors import (AutoparallelizeError, FailedItemsWarning, InputFileError, OpOutputError,
                             OutputFormatError, OutputLockedError, OutputWriteError)

TESTS = Path(__file__).resolve().parent
DEADLINE = 60

pytestmark = pytest.mark.timeout(300)


def structures(n, n_atoms=1):
    return [Atoms("H" * n_atoms, positions=[[0, 0, 0.8 * k] for k in range(n_atoms)], cell=[5, 5, 5], pbc=True,
                  info={"label": i}) for i in range(n)]


def write_input(path, n, n_atoms=1):
    ase.io.write(path, structures(n, n_atoms), format="extxyz")
    return path


def driver(tmp_path, body, *argv, name="driver.py"):
    """Start a Python driver script (its own session) with the tests directory importable."""
    script = tmp_path / name
    script.write_text(textwrap.dedent(body))
    stderr = open(tmp_path / f"{name}.stderr", "w")
    python_path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    proc = subprocess.Popen([sys.executable, str(script), *map(str, argv)], cwd=tmp_path,
                            env=driver_env(PYTHONPATH=python_path),
                            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    stderr.close()
    proc.stderr_path = tmp_path / f"{name}.stderr"
    return proc


@contextlib.contextmanager
def ended(proc):
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def finish(proc):
    try:
        return proc.wait(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the driver was still running after {DEADLINE} s\n{proc.stderr_path.read_text()}")


# --- ops (module level, so that worker processes find them) --------------------------------------------

def tag_op(items, bad_index, key, value):
    """Sets info[key] = value on the item whose label is bad_index (an array for key 'arrays:NAME')."""
    for atoms in items:
        atoms.info["ok"] = 1
        if atoms.info["label"] == bad_index:
            if isinstance(key, str) and key.startswith("arrays:"):
                atoms.arrays[key[len("arrays:"):]] = np.array(value)
            else:
                atoms.info[key] = value
    return items


def identity_op(items):
    return items


def fails_first_op(items, n_failing):
    for atoms in items:
        if atoms.info["label"] < n_failing:
            raise RuntimeError("this item really fails")
    return items


def huge_message_op(items):
    raise ValueError("x" * 5_000_000)


# --- points 15 and 6: an output the file cannot hold is a failed item; never an unreadable file ---------

BAD_OUTPUTS = {
    "newline in an info string": ("note", "first line\nsecond line", "note"),
    "non-string info key": (3, 1.0, "3"),
    "newline in an info key": ("bad\nkey", 1, "bad"),
    "empty info string": ("empty", "", "empty"),
    "backslash in an info string": ("path", "C:\\data", "path"),
    "per-atom string with white space": ("arrays:label_text", ["a b"], "label_text"),
}


@pytest.mark.parametrize("case", list(BAD_OUTPUTS))
def test_an_output_the_file_cannot_hold_is_a_failed_item_and_a_rerun_completes(tmp_path, case):
    key, value, named = BAD_OUTPUTS[case]
    inputs = write_input(tmp_path / "in.xyz", 6)
    out = tmp_path / "out.xyz"
    info = {"num_python_subprocesses": 2, "num_inputs_per_python_subprocess": 2}

    with pytest.raises(AutoparallelizeError) as raised:
        autoparallelize(tag_op, ConfigSet(inputs), OutputSpec(out), 3, key, value, autopara_info=info)
    assert [f.index for f in raised.value.failures] == [3]
    reason = raised.value.failures[0].reason
    assert reason.startswith(("OpOutputError: ", "OutputFormatError: ")) and named in reason, reason
    assert isinstance(raised.value.failures[0].exception, OpOutputError)
    assert not out.exists()
    # the item was not journaled as done: the journal holds the five others only
    with Journal(journal_path(out), read_only=True) as journal:
        assert journal.counts()["done"] == 5

    # errors="skip" completes, with a file that reads back (ASE and the returned ConfigSet)
    with pytest.warns(FailedItemsWarning, match="item 3"):
        result = autoparallelize(tag_op, ConfigSet(inputs), OutputSpec(out), 3, key, value,
                                 autopara_info={**info, "errors": "skip"})
    assert [f.index for f in result.failures] == [3]
    assert [a.info["label"] for a in ase.io.read(out, ":")] == [0, 1, 2, 4, 5]
    assert [a.info["label"] for a in result] == [0, 1, 2, 4, 5]


def test_store_refuses_an_unreadable_structure_and_writes_nothing_of_it(tmp_path):
    out = OutputSpec(tmp_path / "out.xyz")
    good, bad = structures(2)
    bad.info["note"] = "a\nb"
    out.store(good)
    with pytest.raises(OutputFormatError, match="'note'.*line break"):
        out.store(bad)
    out.close()
    assert [a.info["label"] for a in ase.io.read(tmp_path / "out.xyz", ":")] == [0]


def test_safe_values_that_need_quoting_still_read_back(tmp_path):
    atoms = structures(1)[0]
    atoms.info.update({"title": 'a "quoted" title with spaces', "my key": "x=y"})
    with OutputSpec(tmp_path / "out.xyz") as out:
        out.store(atoms)
    back = ase.io.read(tmp_path / "out.xyz")
    assert back.info["title"] == 'a "quoted" title with spaces'
    assert back.info["my key"] == "x=y"


# --- point 14: the output's lock belongs to the output -----------------------------------------------

HOLDER = """
    import sys
    from wfl_like import ConfigSet, OutputSpec
    from wfl_like.autoparallelize import autoparallelize
    from helpers import wait_for_release

    INPUT, OUT, RELEASE, TAG = sys.argv[1:5]
    CACHE = {"default": None, "off": False}.get(sys.argv[5], sys.argv[5])

    def gated(items):
        wait_for_release(RELEASE, TAG)
        return items

    autoparallelize(gated, ConfigSet(INPUT), OutputSpec(OUT, tags={"writer": TAG}),
                    autopara_info={"cache": CACHE, "num_inputs_per_python_subprocess": 50})
"""


def start_holder(tmp_path, inputs, out, cache, tag="A"):
    release = tmp_path / f"release-{tag}"
    proc = driver(tmp_path, HOLDER, inputs, out, release, tag, cache, name=f"holder_{tag}.py")
    waiting = Path(f"{release}.waiting-{tag}")
    assert wait_for(lambda: waiting.exists() or proc.poll() is not None, DEADLINE), "the holder did not start"
    assert proc.poll() is None, proc.stderr_path.read_text()
    return proc, release


def assert_whole_output(out, n, writer):
    frames = ase.io.read(out, ":")
    assert [a.info["label"] for a in frames] == list(range(n))
    assert {a.info["writer"] for a in frames} == {writer}


@pytest.mark.parametrize("first, second", [("off", "off"), ("off", "other.sqlite"), ("default", "off"),
                                           ("a.sqlite", "b.sqlite")])
def test_a_second_writer_is_refused_whatever_the_journal_settings(tmp_path, first, second):
    inputs = write_input(tmp_path / "in.xyz", 20)
    out = tmp_path / "out.xyz"
    with ended(start_holder(tmp_path, inputs, out, first)[0]) as holder:
        second_cache = {"off": False}.get(second, tmp_path / second)
        refused = rf"out.xyz' is being written by another run \(process {holder.pid},"
        with pytest.raises(OutputLockedError, match=refused):
            autoparallelize(identity_op, ConfigSet(inputs), OutputSpec(out, tags={"writer": "B"}),
                            autopara_info={"cache": second_cache})
        (tmp_path / "release-A").touch()
        assert finish(holder) == 0, holder.stderr_path.read_text()
    assert_whole_output(out, 20, "A")


def test_deleting_the_journal_lock_file_does_not_let_a_second_writer_in(tmp_path):
    inputs = write_input(tmp_path / "in.xyz", 20)
    out = tmp_path / "out.xyz"
    with ended(start_holder(tmp_path, inputs, out, "default")[0]) as holder:
        lock = journal_path(out).with_name(journal_path(out).name + ".lock")
        assert lock.exists()
        lock.unlink()
        with pytest.raises(OutputLockedError, match="out.xyz"):
            autoparallelize(identity_op, ConfigSet(inputs), OutputSpec(out, tags={"writer": "B"}))
        (tmp_path / "release-A").touch()
        assert finish(holder) == 0, holder.stderr_path.read_text()
    assert_whole_output(out, 20, "A")


def test_deleting_the_partial_file_lets_no_two_writers_corrupt_the_output(tmp_path):
    inputs = write_input(tmp_path / "in.xyz", 20)
    out = tmp_path / "out.xyz"
    with ended(start_holder(tmp_path, inputs, out, "off")[0]) as holder:
        partial = tmp_path / ".out.xyz.partial"
        assert partial.exists()
        partial.unlink()
        # a second writer now gets a partial file of its own, and publishes a whole output
        autoparallelize(identity_op, ConfigSet(inputs), OutputSpec(out, tags={"writer": "B"}),
                        autopara_info={"cache": False})
        assert_whole_output(out, 20, "B")
        (tmp_path / "release-A").touch()
        assert finish(holder) == 1
        stderr = holder.stderr_path.read_text()
        assert "OutputWriteError" in stderr and "was not published" in stderr and "removed or replaced" in stderr
    # the first writer published nothing over the second's output, and left nothing behind
    assert_whole_output(out, 20, "B")
    assert not partial.exists()


def test_in_one_process_a_second_spec_is_refused_and_the_first_keeps_its_lock(tmp_path):
    out = tmp_path / "out.xyz"
    first = OutputSpec(out)
    first.claim()
    with pytest.raises(OutputLockedError, match="out.xyz"):
        OutputSpec(out).claim()
    # the refused attempt did not release the first's lock: another process is refused too
    probe = driver(tmp_path, """
        import sys
        from wfl_like import OutputSpec
        from wfl_like.errors import OutputLockedError
        try:
            OutputSpec(sys.argv[1]).claim()
        except OutputLockedError:
            sys.exit(3)
    """, out, name="probe.py")
    with ended(probe):
        assert finish(probe) == 3, probe.stderr_path.read_text()
    first.store(structures(1))
    first.close()
    assert len(ase.io.read(out, ":")) == 1


# --- point 16: an output linked to an input ---------------------------------------------------------

@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_an_output_linked_to_an_input_is_refused_and_the_input_untouched(tmp_path, link):
    inputs = write_input(tmp_path / "in.xyz", 3)
    before = inputs.read_bytes()
    out = tmp_path / "out.xyz"
    (os.link if link == "hard" else os.symlink)(inputs, out)
    with pytest.raises(ValueError, match="out.xyz.*is also an input"):
        autoparallelize(identity_op, ConfigSet(inputs), OutputSpec(out, overwrite=True))
    assert inputs.read_bytes() == before


# --- point 17: edge messages ---------------------------------------------------------------------

def frames_text(n):
    text = io.StringIO()
    ase.io.write(text, structures(n, n_atoms=2), format="extxyz")
    return text.getvalue().splitlines(keepends=True)


@pytest.mark.parametrize("damage", ["count line", "coordinate"])
def test_garbage_in_frame_5_is_reported_at_frame_5_with_its_line(tmp_path, damage):
    lines = frames_text(8)      # 4 lines a frame: count, comment, two atoms
    target = 5 * 4 + (0 if damage == "count line" else 3)
    lines[target] = "garbage here\n" if damage == "count line" else "H 0.0 zz 1.0\n"
    path = tmp_path / "in.xyz"
    path.write_text("".join(lines))
    with pytest.raises(InputFileError, match=r"in.xyz.*frame 5 \(line 21\)"):
        autoparallelize(identity_op, ConfigSet(path), None)


def test_a_bare_atoms_is_one_structure(tmp_path):
    atoms = structures(1, n_atoms=3)[0]
    result = autoparallelize(identity_op, atoms, OutputSpec())
    assert [len(a) for a in result] == [3]


def test_a_malformed_location_in_an_input_file_names_the_file_and_frame(tmp_path):
    frames = structures(3)
    frames[1].info["_ConfigSet_loc"] = "not a location"
    ase.io.write(tmp_path / "in.xyz", frames, format="extxyz")
    with pytest.raises(InputFileError, match=r"in.xyz.*structure 1.*not a location"):
        autoparallelize(identity_op, ConfigSet(tmp_path / "in.xyz"), OutputSpec())


def test_a_huge_location_costs_no_memory(tmp_path):
    frames = structures(2)
    frames[0].info["_ConfigSet_loc"] = " / 3"
    frames[1].info["_ConfigSet_loc"] = " / 1000000000 / 0"
    ase.io.write(tmp_path / "in.xyz", frames, format="extxyz")
    # a billion placeholders would need 8 GB: the driver gets 1 GB of address space to spare
    proc = driver(tmp_path, """
        import resource, sys
        from wfl_like import ConfigSet, OutputSpec
        from wfl_like.autoparallelize import autoparallelize
        from test_trust_outputs import identity_op
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (int(open("/proc/self/statm").read().split()[0])
                                                * resource.getpagesize() + 2**30, hard))
        inputs = ConfigSet(sys.argv[1])
        result = autoparallelize(identity_op, inputs, OutputSpec())
        groups = list(inputs.groups())
        print(len(groups), [a.info["_ConfigSet_loc"] for a in result], file=sys.stderr)
    """, tmp_path / "in.xyz", name="huge.py")
    with ended(proc):
        assert finish(proc) == 0, proc.stderr_path.read_text()
    assert proc.stderr_path.read_text().split("\n")[-2] == "2 [' / 3', ' / 1000000000 / 0']"


def test_a_huge_exception_message_is_cut_in_the_reason_and_the_traceback(tmp_path):
    with pytest.warns(FailedItemsWarning):
        result = autoparallelize(huge_message_op, structures(1), OutputSpec(),
                                 autopara_info={"num_python_subprocesses": 1, "errors": "skip"})
    failure, = result.failures
    assert failure.reason.startswith("ValueError: xxx") and len(failure.reason) < 600
    assert 1000 < len(failure.traceback) < 21_000


@contextlib.contextmanager
def small_tmpfs(path, size):
    path.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (tests need root for it): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_removes_the_partial_file_names_the_output_and_keeps_the_journal(tmp_path):
    inputs = write_input(tmp_path / "in.xyz", 60, n_atoms=20)        # about 100 kB written
    journal = tmp_path / "journal.sqlite"
    with small_tmpfs(tmp_path / "small", "32k") as small:
        out = small / "out.xyz"
        with pytest.raises(OutputWriteError, match="out.xyz.*No space left") as raised:
            autoparallelize(identity_op, ConfigSet(inputs), OutputSpec(out),
                            autopara_info={"cache": journal, "num_inputs_per_python_subprocess": 5})
        assert raised.value.filename == str(out)
        assert isinstance(raised.value, OSError)
        # no partial output is left; the manifest (if the disk took it) says why the run stopped
        assert [p.name for p in small.iterdir() if not p.name.endswith(".manifest.json")] == []
    with Journal(journal, read_only=True) as kept:
        assert kept.counts()["done"] >= 5


def test_a_read_only_output_directory_is_refused_before_any_work(tmp_path):
    inputs = write_input(tmp_path / "in.xyz", 3)
    with small_tmpfs(tmp_path / "ro", "64k") as ro:
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        with pytest.raises(PermissionError, match="ro'? is not writable"):
            autoparallelize(identity_op, ConfigSet(inputs), OutputSpec(ro / "out.xyz"),
                            autopara_info={"cache": tmp_path / "journal.sqlite"})
        assert list(ro.iterdir()) == []


def test_a_file_system_turned_read_only_during_the_run_is_an_output_write_error_naming_the_file(tmp_path):
    inputs = write_input(tmp_path / "in.xyz", 5)
    with small_tmpfs(tmp_path / "fs", "1m") as fs:
        out = fs / "out.xyz"
        holder, release = start_holder(tmp_path, inputs, out, str(tmp_path / "journal.sqlite"))
        with ended(holder):
            # the directory seen read-only from now on (a remount of the whole file system is
            # refused while a file is open for writing on it)
            subprocess.run(["mount", "--bind", str(fs), str(fs)], check=True)
            try:
                subprocess.run(["mount", "-o", "remount,bind,ro", str(fs)], check=True)
                release.touch()
                assert finish(holder) == 1
            finally:
                subprocess.run(["umount", str(fs)], check=False)
        stderr = holder.stderr_path.read_text()
        assert "OutputWriteError" in stderr and "out.xyz" in stderr and "Read-only file system" in stderr, stderr
        # nothing can be removed from a read-only file system: the message says what is left
        assert "could not remove the partial file" in stderr, stderr
        assert not out.exists()
    with Journal(tmp_path / "journal.sqlite", read_only=True) as kept:
        assert kept.counts()["done"] == 5


# the command line, with SIGTERM sent to itself by a log handler just before, or just
# after, the final rename of the output
STOP_AT_RENAME = """
    import logging, os, signal, sys
    from wfl_like.cli import main

    class SignalAt(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith(sys.argv[1] + " "):
                os.kill(os.getpid(), signal.SIGTERM)

    logger = logging.getLogger("wfl_like.io.partial")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(SignalAt())
    sys.exit(main(["calculate", sys.argv[2], "-o", sys.argv[3]]))
"""


@pytest.mark.parametrize("moment", ["publishing", "published"])
def test_sigterm_at_the_final_rename_leaves_no_partial_and_says_truly_whether_the_output_was_written(
        tmp_path, moment):
    inputs = write_input(tmp_path / "in.xyz", 4, n_atoms=2)
    out = tmp_path / "out.xyz"
    proc = driver(tmp_path, STOP_AT_RENAME, moment, inputs, out)
    with ended(proc):
        assert finish(proc) == 128 + signal.SIGTERM
    stderr = proc.stderr_path.read_text()
    assert "Traceback" not in stderr, stderr
    assert not (tmp_path / ".out.xyz.partial").exists()
    if moment == "publishing":
        assert not out.exists()
        assert "terminated; no output was written" in stderr, stderr
    else:
        assert len(ase.io.read(out, ":")) == 4
        assert "terminated after the output was written completely" in stderr, stderr


GATED_CLI = """
    import sys
    from ase.calculators.emt import EMT
    from helpers import wait_for_release
    from wfl_like.cli import main

    class GatedEMT(EMT):
        def calculate(self, *args, **kwargs):
            wait_for_release(sys.argv[1], "calc")
            super().calculate(*args, **kwargs)

    sys.modules["gated"] = sys.modules[__name__]
    sys.exit(main(["calculate", sys.argv[2], "-o", sys.argv[3], "-c", "gated:GatedEMT"]))
"""


def test_an_output_directory_deleted_during_the_run_exits_1_naming_the_output(tmp_path):
    inputs = write_input(tmp_path / "in.xyz", 3, n_atoms=2)
    out = tmp_path / "outdir" / "out.xyz"
    release = tmp_path / "release"
    proc = driver(tmp_path, GATED_CLI, release, inputs, out)
    with ended(proc):
        assert wait_for(lambda: Path(f"{release}.waiting-calc").exists() or proc.poll() is not None, DEADLINE)
        assert proc.poll() is None, proc.stderr_path.read_text()
        shutil.rmtree(out.parent)
        release.touch()
        code = finish(proc)
    stderr = proc.stderr_path.read_text()
    assert code == 1, stderr
    assert "out.xyz" in stderr and "was removed" in stderr and "Traceback" not in stderr, stderr


def run_cli(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "wfl_like.cli", *map(str, args)], cwd=tmp_path, env=driver_env(),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, named", [
    (["-p", "nonsense"], "nonsense"),
    (["-p", "dipole", "-c", "ase.calculators.emt:EMT"], "implements none"),
    (["-n", "-1"], "-n"),
])
def test_bad_command_line_values_exit_2_before_any_work(tmp_path, args, named):
    inputs = write_input(tmp_path / "in.xyz", 2)
    proc = run_cli(tmp_path, "calculate", inputs, "-o", tmp_path / "out.xyz", *args)
    assert proc.returncode == 2, proc.stderr
    assert named in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.xyz"]


@pytest.mark.parametrize("properties, error, match", [
    ("energy", TypeError, "not the string 'energy'.*\\['energy'\\]"),
    (["energy", "nonsense"], ValueError, "unknown properties \\['nonsense'\\]"),
    (["dipole"], ValueError, "EMT implements none"),
])
def test_bad_properties_are_clear_errors_before_any_work(tmp_path, properties, error, match):
    from ase.calculators.emt import EMT

    inputs = write_input(tmp_path / "in.xyz", 2)
    with pytest.raises(error, match=match):
        calculate(ConfigSet(inputs), OutputSpec(tmp_path / "out.xyz"), (EMT, (), {}), properties=properties)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.xyz"]


# --- point 18: fail_fast ----------------------------------------------------------------------

def test_fail_fast_false_goes_through_every_item_and_the_early_stop_says_how(tmp_path):
    inputs = structures(16)
    info = {"num_python_subprocesses": 2, "num_inputs_per_python_subprocess": 1, "errors": "skip"}
    with pytest.raises(AutoparallelizeError, match="fail_fast': False") as raised:
        autoparallelize(fails_first_op, inputs, OutputSpec(), 12, autopara_info=info)
    assert raised.value.stopped_early
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FailedItemsWarning)
        result = autoparallelize(fails_first_op, inputs, OutputSpec(), 12, autopara_info={**info, "fail_fast": False})
    assert [f.index for f in result.failures] == list(range(12))
    assert [a.info["label"] for a in result] == [12, 13, 14, 15]
