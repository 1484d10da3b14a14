"""Clear errors on bad input, through the library API (issue 3, point 7).

The command-line side of the same cases is in ``test_cli.py``.  Ops count their calls
with marker files, so "before any work" is checked in worker processes too.
"""

import io
import multiprocessing
import os
import tempfile

import ase.io
import pytest
from ase import Atoms

from wfl_like import ConfigSet, OutputSpec
from wfl_like.autoparallelize import autoparallelize
from wfl_like.errors import AutoparallelizeError, InputFileError

NUM_ENV = "WFL_NUM_PYTHON_SUBPROCESSES"
START_ENV = "WFL_LIKE_START_METHOD"
N_FRAMES = 12
NPROCS = [0, 2]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    monkeypatch.delenv(NUM_ENV, raising=False)
    monkeypatch.delenv(START_ENV, raising=False)
    yield
    # whatever failed, no worker process is left behind
    assert [p for p in multiprocessing.active_children() if p.name == "wfl_like-worker"] == []


def make_frames(n=N_FRAMES):
    return [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7 + 0.01 * i]], cell=[4, 4, 4], pbc=True,
                  info={"label": i}) for i in range(n)]


def extxyz_lines(frames):
    text = io.StringIO()
    ase.io.write(text, frames, format="extxyz")
    return text.getvalue().splitlines(keepends=True)


def para(nproc, chunk=1):
    return {"num_python_subprocesses": nproc, "num_inputs_per_python_subprocess": chunk}


def full_name(op):
    return f"{op.__module__}.{op.__qualname__}"


@pytest.fixture
def calls(tmp_path):
    directory = tmp_path / "calls"
    directory.mkdir()
    return directory


def n_calls(directory):
    return len(list(directory.iterdir()))


def counting_op(items, directory):
    fd, _ = tempfile.mkstemp(dir=directory, prefix="call-")
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    for atoms in items:
        atoms.info["seen"] = True
    return items


def assert_no_output(path):
    assert not os.path.exists(path), f"{path} was written"
    partial = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.partial")
    assert not os.path.exists(partial), f"{partial} was left behind"


@pytest.fixture
def input_file(tmp_path):
    path = tmp_path / "data" / "in.xyz"
    path.parent.mkdir()
    path.write_text("".join(extxyz_lines(make_frames())))
    return path


# --- input files ---------------------------------------------------------------------------

def test_missing_input_file_is_a_file_not_found_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere" / "missing.xyz"
    with pytest.raises(FileNotFoundError, match="missing.xyz") as info:
        autoparallelize(counting_op, ConfigSet(missing), OutputSpec(tmp_path / "out.xyz"), str(tmp_path))
    assert str(missing) in str(info.value)
    # one missing among several files
    present = tmp_path / "present.xyz"
    present.write_text("".join(extxyz_lines(make_frames(2))))
    with pytest.raises(FileNotFoundError) as info:
        ConfigSet([present, missing])
    assert str(missing) in str(info.value)
    assert_no_output(tmp_path / "out.xyz")


def test_glob_matching_nothing_is_a_file_not_found_error_naming_it(tmp_path):
    (tmp_path / "other.txt").write_text("not a match")
    pattern = tmp_path / "run_*" / "*.xyz"
    with pytest.raises(FileNotFoundError) as info:
        ConfigSet(str(pattern))
    assert str(pattern) in str(info.value)


def test_input_file_removed_after_the_configset_was_made_names_it(tmp_path, input_file, calls):
    inputs = ConfigSet(input_file)
    input_file.unlink()
    out = tmp_path / "out.xyz"
    with pytest.raises((FileNotFoundError, InputFileError)) as info:
        autoparallelize(counting_op, inputs, OutputSpec(out), str(calls), autopara_info=para(2))
    assert str(input_file) in str(info.value)
    assert n_calls(calls) == 0
    assert_no_output(out)


@pytest.mark.parametrize("nproc", NPROCS)
@pytest.mark.parametrize("lines_kept", [2, 3, 1], ids=["after-comment", "mid-atoms", "after-count"])
def test_truncated_extxyz_names_the_file_and_the_frame(tmp_path, calls, nproc, lines_kept):
    lines = extxyz_lines(make_frames())
    bad_frame = 9       # frames 0..8 are whole; 9 is cut after its first `lines_kept` lines
    path = tmp_path / "truncated.xyz"
    path.write_text("".join(lines[:4 * bad_frame + lines_kept]))
    out = tmp_path / "out.xyz"
    with pytest.raises(InputFileError) as info:
        autoparallelize(counting_op, ConfigSet(path), OutputSpec(out), str(calls), autopara_info=para(nproc))
    message = str(info.value)
    assert str(path) in message
    assert f"frame {bad_frame}" in message
    # the chunks already running when the input broke off were finished, not thrown away
    assert n_calls(calls) >= 1
    assert_no_output(out)
    # ...and journaled: once the file is whole, only what was not yet computed runs
    done_before = n_calls(calls)
    path.write_text("".join(lines))
    result = autoparallelize(counting_op, ConfigSet(path), OutputSpec(out), str(calls), autopara_info=para(nproc))
    assert [atoms.info["label"] for atoms in result] == list(range(N_FRAMES))
    assert n_calls(calls) == N_FRAMES, f"{done_before} frames computed before the cut were computed again"


GARBAGE = {
    "text": b"3\nnot a comment line of extended XYZ\nCu 0 0\n",
    "prose": b"hello world\nthis is not a structure file\n",
    "binary": bytes(range(256)) * 8,
}


@pytest.mark.parametrize("nproc", NPROCS)
@pytest.mark.parametrize("kind", list(GARBAGE))
def test_garbage_file_names_the_file_and_frame_0(tmp_path, calls, nproc, kind):
    path = tmp_path / "garbage.xyz"
    path.write_bytes(GARBAGE[kind])
    out = tmp_path / "out.xyz"
    with pytest.raises(InputFileError) as info:
        autoparallelize(counting_op, ConfigSet(path), OutputSpec(out), str(calls), autopara_info=para(nproc))
    assert str(path) in str(info.value)
    assert "frame 0" in str(info.value)
    assert n_calls(calls) == 0
    assert_no_output(out)


# --- output paths --------------------------------------------------------------------------

@pytest.mark.parametrize("nproc", NPROCS)
def test_missing_output_directory_is_created(tmp_path, input_file, calls, nproc):
    out = tmp_path / "new" / "deeper" / "out.xyz"
    result = autoparallelize(counting_op, ConfigSet(input_file), OutputSpec(out), str(calls),
                             autopara_info=para(nproc, 5))
    assert out.is_file()
    written = ase.io.read(out, ":")
    assert [atoms.info["label"] for atoms in written] == list(range(N_FRAMES))
    assert all(atoms.info["seen"] for atoms in written)
    assert [atoms.info["label"] for atoms in result] == list(range(N_FRAMES))


@pytest.mark.parametrize("nproc", NPROCS)
@pytest.mark.parametrize("below", [("out.xyz",), ("sub", "out.xyz")], ids=["in-file", "below-file"])
def test_output_directory_that_cannot_be_made_is_an_os_error_naming_it(tmp_path, input_file, calls, nproc,
                                                                       below):
    # a regular file where a directory should be: mkdir fails even for root
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory\n")
    out = blocker.joinpath(*below)
    with pytest.raises(OSError) as info:
        autoparallelize(counting_op, ConfigSet(input_file), OutputSpec(out), str(calls), autopara_info=para(nproc))
    assert str(out.parent) in str(info.value)
    assert n_calls(calls) == 0, "the op ran although its output could not be written"
    assert blocker.read_text() == "a file, not a directory\n"


@pytest.mark.parametrize("overwrite", [False, True], ids=["keep", "overwrite"])
@pytest.mark.parametrize("spelling", ["same", "dotdot", "dot", "relative", "symlink"])
def test_output_path_equal_to_an_input_is_refused_and_input_untouched(tmp_path, input_file, calls, monkeypatch,
                                                                        overwrite, spelling):
    directory = input_file.parent
    if spelling == "same":
        out = input_file
    elif spelling == "dotdot":
        out = directory / ".." / directory.name / input_file.name
    elif spelling == "dot":
        out = directory / "." / input_file.name
    elif spelling == "relative":
        monkeypatch.chdir(directory)
        out = input_file.name
    else:
        out = tmp_path / "link.xyz"
        out.symlink_to(input_file)
    before = input_file.read_bytes()
    second = tmp_path / "second.xyz"
    second.write_text("".join(extxyz_lines(make_frames(3))))
    with pytest.raises(ValueError) as info:
        autoparallelize(counting_op, ConfigSet([second, input_file]), OutputSpec(out, overwrite=overwrite),
                        str(calls), autopara_info=para(2))
    assert str(out) in str(info.value)
    assert input_file.read_bytes() == before
    assert n_calls(calls) == 0
    assert not list(input_file.parent.glob(".*.partial"))


# --- environment variables -----------------------------------------------------------------

@pytest.mark.parametrize("value", ["two", "-1", "1.5", "2 workers"])
def test_bad_number_of_processes_env_var_is_a_value_error_naming_it(tmp_path, input_file, calls, monkeypatch,
                                                                     value):
    monkeypatch.setenv(NUM_ENV, value)
    out = tmp_path / "out.xyz"
    with pytest.raises(ValueError) as info:
        autoparallelize(counting_op, ConfigSet(input_file), OutputSpec(out), str(calls))
    assert NUM_ENV in str(info.value) and value in str(info.value)
    assert n_calls(calls) == 0
    assert_no_output(out)


def test_good_number_of_processes_env_var_is_used(tmp_path, input_file, calls, monkeypatch):
    monkeypatch.setenv(NUM_ENV, " 2 ")
    result = autoparallelize(counting_op, ConfigSet(input_file), OutputSpec(), str(calls))
    assert len(list(result)) == N_FRAMES
    pids = {int(p.read_text()) for p in calls.iterdir()}
    assert n_calls(calls) == N_FRAMES
    assert os.getpid() not in pids and 1 <= len(pids) <= 2     # two workers ran them


def test_unknown_start_method_is_a_value_error_naming_the_variable(tmp_path, input_file, calls, monkeypatch):
    monkeypatch.setenv(START_ENV, "bogus")
    out = tmp_path / "out.xyz"
    with pytest.raises(ValueError) as info:
        autoparallelize(counting_op, ConfigSet(input_file), OutputSpec(out), str(calls), autopara_info=para(2))
    assert START_ENV in str(info.value) and "bogus" in str(info.value)
    assert n_calls(calls) == 0
    assert_no_output(out)


# --- arguments -------------------------------------------------------------------------------

@pytest.mark.parametrize("inputs", [42, None, 3.5], ids=["int", "None", "float"])
def test_inputs_that_are_not_iterable_are_a_type_error(calls, inputs):
    with pytest.raises(TypeError) as info:
        autoparallelize(counting_op, inputs, OutputSpec(), str(calls), autopara_info=para(2))
    assert "iterable" in str(info.value) and type(inputs).__name__ in str(info.value)
    assert n_calls(calls) == 0


@pytest.mark.parametrize("outputs", ["out.xyz", ["out.xyz"], "CONFIGSET"], ids=["str", "list", "ConfigSet"])
def test_outputs_that_are_not_an_outputspec_are_a_type_error(tmp_path, calls, monkeypatch, outputs):
    monkeypatch.chdir(tmp_path)
    if outputs == "CONFIGSET":
        outputs = ConfigSet(make_frames(2))
    with pytest.raises(TypeError) as info:
        autoparallelize(counting_op, make_frames(4), outputs, str(calls), autopara_info=para(2))
    assert "OutputSpec" in str(info.value) and type(outputs).__name__ in str(info.value)
    assert n_calls(calls) == 0
    assert not (tmp_path / "out.xyz").exists()


def one_too_many_op(items):
    return list(items) + [items[0]]


def one_too_few_op(items):
    return list(items)[:-1]


def not_a_list_op(items):
    return 42


@pytest.mark.parametrize("nproc", NPROCS)
@pytest.mark.parametrize("op", [one_too_many_op, one_too_few_op, not_a_list_op], ids=lambda op: op.__name__)
@pytest.mark.parametrize("to_file", [False, True], ids=["memory", "file"])
def test_op_returning_the_wrong_number_of_outputs_names_the_op(tmp_path, nproc, op, to_file):
    out = tmp_path / "out.xyz"
    with pytest.raises(AutoparallelizeError) as info:
        autoparallelize(op, make_frames(5), OutputSpec(out) if to_file else OutputSpec(),
                        autopara_info=para(nproc, 2))
    message = str(info.value)
    assert full_name(op) in message
    assert "one output (or None) per input item" in message
    assert {failure.index for failure in info.value.failures} == set(range(5))
    assert_no_output(out)


def string_op(items):
    return [f"label {atoms.info['label']}" for atoms in items]


def dict_op(items):
    return [{"label": atoms.info["label"]} for atoms in items]


def mixed_op(items):
    return [atoms if atoms.info["label"] % 2 else atoms.positions for atoms in items]


@pytest.mark.parametrize("nproc", NPROCS)
@pytest.mark.parametrize("op", [string_op, dict_op, mixed_op], ids=lambda op: op.__name__)
def test_op_returning_non_atoms_for_a_file_names_the_op(tmp_path, nproc, op):
    out = tmp_path / "out.xyz"
    with pytest.raises(AutoparallelizeError) as info:
        autoparallelize(op, make_frames(6), OutputSpec(out), autopara_info=para(nproc, 2))
    message = str(info.value)
    assert full_name(op) in message
    assert "Atoms" in message and str(out) in message
    expected = {0, 2, 4} if op is mixed_op else set(range(6))
    assert {failure.index for failure in info.value.failures} == expected
    assert_no_output(out)


@pytest.mark.parametrize("name", ["out.traj", "out.json", "out.cif", "out.foo", "out"])
def test_output_name_that_is_not_extended_xyz_is_refused_at_construction(tmp_path, name):
    path = tmp_path / "sub" / name
    with pytest.raises(ValueError) as info:
        OutputSpec(path)
    assert str(path) in str(info.value)
    assert not (tmp_path / "sub").exists()      # nothing made on the way
    # several files: the bad one is named
    good = tmp_path / "good.xyz"
    with pytest.raises(ValueError) as info:
        OutputSpec([good, path])
    assert str(path) in str(info.value) and str(good) not in str(info.value)


def test_extended_xyz_names_and_explicit_format_are_accepted(tmp_path):
    for name in ["out.xyz", "out.extxyz"]:
        OutputSpec(tmp_path / name)
    spec = OutputSpec(tmp_path / "out.data", write_kwargs={"format": "extxyz"})
    spec.store(make_frames(1)[0])
    spec.close()
    assert len(ase.io.read(tmp_path / "out.data", ":", format="extxyz")) == 1


@pytest.mark.parametrize("overwrite", [False, True])
def test_output_path_that_is_a_directory_is_refused_before_any_work(tmp_path, overwrite):
    (tmp_path / "out.xyz").mkdir()
    inputs = [Atoms("H", positions=[[0, 0, 0]], cell=[2, 2, 2])]
    with pytest.raises(IsADirectoryError, match="out.xyz"):
        autoparallelize(_directory_case_op, inputs, OutputSpec(tmp_path / "out.xyz", overwrite=overwrite))
    assert (tmp_path / "out.xyz").is_dir()


def _directory_case_op(items):
    raise AssertionError("the op must not run")
