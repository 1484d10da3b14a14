"""Tests of the autoparallelize front door with real worker processes and real files."""

import inspect
import multiprocessing
import os
import signal
import sys
import tempfile
import time
import warnings

import ase.io
import numpy as np
import pytest
from ase import Atoms

import wfl_like
from wfl_like import ConfigSet, OutputSpec
from wfl_like.autoparallelize import AutoparaInfo, autoparallelize, autoparallelize_docstring, autoparallelized
from wfl_like.autoparallelize.workers.pool import RemoteTraceback
from wfl_like.errors import (AutoparallelizeError, FailedItemsWarning, OpOutputError, WorkerDiedError,
                             WorkerInitializerError)
from helpers import is_running as process_running, listing

NPROCS = [0, 1, 3]
CHUNKS = [1, 2, 7]
ENV = "WFL_NUM_PYTHON_SUBPROCESSES"


# --- structures and helpers ----------------------------------------------------------


def make_atoms(label):
    atoms = Atoms("H", positions=[[0.0, 0.0, 0.1 * label]], cell=[3, 3, 3], pbc=True)
    atoms.info["label"] = label
    return atoms


def make_list(n, start=0):
    return [make_atoms(i) for i in range(start, start + n)]


def labels(configs):
    return [atoms.info["label"] for atoms in configs]


def shape(configset):
    """Nested lists of labels, following ConfigSet.groups()."""
    out = []
    for item in configset.groups():
        out.append(item.info["label"] if isinstance(item, Atoms) else shape(item))
    return out


def assert_same_atoms(first, second, exact=True):
    """Same positions, info and arrays; ``exact=False`` allows the rounding of a trip through a file."""
    same = np.testing.assert_array_equal if exact else (
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12))
    first, second = list(first), list(second)
    assert len(first) == len(second)
    for a, b in zip(first, second):
        same(a.positions, b.positions)
        np.testing.assert_array_equal(a.numbers, b.numbers)
        assert sorted(a.info) == sorted(b.info)
        for key in a.info:
            if isinstance(a.info[key], str):
                assert a.info[key] == b.info[key]
            else:
                same(a.info[key], b.info[key])
        assert sorted(a.arrays) == sorted(b.arrays)
        for key in a.arrays:
            same(a.arrays[key], b.arrays[key])


def para(nproc, chunk=1, **more):
    return {"num_python_subprocesses": nproc, "num_inputs_per_python_subprocess": chunk, **more}


def worker_children():
    return [p for p in multiprocessing.active_children() if p.name == "wfl_like-worker"]


def marker_pids(directory, prefix):
    return sorted(int(p.name[len(prefix):]) for p in directory.iterdir() if p.name.startswith(prefix))


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    yield
    # every call, successful or not, must leave no worker process behind
    assert worker_children() == []


# --- operations: module level ----------------------------------------------------------


_TEST_PROCESS = os.getpid()


def shift_op(atoms_list, dz=0.25, *, note="shifted"):
    out = []
    for atoms in atoms_list:
        if atoms.info["label"] == 0 and os.getpid() != _TEST_PROCESS:
            time.sleep(0.02)        # in a worker: later items finish first, order must still hold
        atoms = atoms.copy()
        atoms.positions[:, 2] += dz
        atoms.info["double"] = 2 * atoms.info["label"]
        atoms.info["note"] = note
        atoms.new_array("lab", np.full(len(atoms), atoms.info["label"]))
        out.append(atoms)
    return out


def factor_first_op(factor, atoms_list):
    for atoms in atoms_list:
        atoms.info["scaled"] = factor * atoms.info["label"]
    return atoms_list


def keyword_op(factor, *, configs):
    for atoms in configs:
        atoms.info["scaled"] = factor * atoms.info["label"]
    return configs


def record_op(atoms_list):
    for atoms in atoms_list:
        atoms.info["pid"] = os.getpid()
        atoms.info["chunk_len"] = len(atoms_list)
    return atoms_list


def two_outputs_op(atoms_list):
    out = []
    for atoms in atoms_list:
        copy = atoms.copy()
        copy.info["copy"] = True
        out.append([atoms, copy])
    return out


def marker_op(numbers, directory):
    for number in numbers:
        with open(os.path.join(directory, f"done-{number}"), "x") as f:
            f.write(str(os.getpid()))
    return None


def draw_op(atoms_list, _autopara_per_item_info=None):
    for atoms, info in zip(atoms_list, _autopara_per_item_info):
        atoms.info["item_i"] = info["item_i"]
        atoms.info["has_rng"] = "rng" in info
        if "rng" in info:
            atoms.info["draws"] = info["rng"].random(4)
    return atoms_list


_INIT_STATE = None


def init_worker(directory, value):
    global _INIT_STATE
    _INIT_STATE = value
    # "x": a second run of the initializer in the same process would fail
    with open(os.path.join(directory, f"init-{os.getpid()}"), "x"):
        pass


def failing_initializer(message):
    raise RuntimeError(message)


def init_state_op(atoms_list):
    for atoms in atoms_list:
        atoms.info["init_state"] = _INIT_STATE
        atoms.info["pid"] = os.getpid()
    return atoms_list


def init_state_when_all_started_op(atoms_list, directory, n_workers):
    # Holds the first chunks until every worker has run its initializer: otherwise one
    # worker could do all the items, and the other, started late on a loaded machine,
    # be stopped at shutdown before its initializer ran, leaving no marker to count.
    def started():
        return len([name for name in os.listdir(directory) if name.startswith("init-")]) >= n_workers

    deadline = time.monotonic() + 60
    while not started() and time.monotonic() < deadline:
        time.sleep(0.02)
    return init_state_op(atoms_list)


def odd_fails_op(atoms_list):
    return [None if atoms.info["label"] % 2 else atoms for atoms in atoms_list]


def returns_none_op(atoms_list):
    return None


def wrong_length_op(atoms_list):
    return atoms_list + atoms_list[:1]


def not_a_list_op(atoms_list):
    return 42


def string_op(atoms_list):
    return [f"label {atoms.info['label']}" for atoms in atoms_list]


def die_on_5_op(atoms_list, directory, how):
    for atoms in atoms_list:
        with open(os.path.join(directory, f"pid-{os.getpid()}"), "w"):
            pass
        if atoms.info["label"] == 5:
            if how == "exit":
                os._exit(7)
            os.kill(os.getpid(), signal.SIGKILL)
    return atoms_list


class LabelError(ValueError):
    pass


def raise_on_3_op(atoms_list):
    for atoms in atoms_list:
        if atoms.info["label"] == 3:
            raise LabelError("label 3 is refused")
    return atoms_list


def counting_op(atoms_list, directory):
    fd, _ = tempfile.mkstemp(dir=directory, prefix="call-")
    os.close(fd)
    for atoms in atoms_list:
        atoms.info["counted"] = True
    return atoms_list


def documented_op(atoms_list, scale, offset=0.0, *, tag="none", _autopara_per_item_info=None):
    """Scale the z coordinate and record a tag.

    Parameters
    ----------
    atoms_list : list of Atoms
        The structures.
    scale : float
        Factor for z.
    offset : float, default 0.0
        Added to z after scaling.
    tag : str, default "none"
        Stored in info["tag"].
    _autopara_per_item_info : list of dict, optional
        Filled in by autoparallelize.

    Returns
    -------
    list of Atoms
    """
    out = []
    for atoms, info in zip(atoms_list, _autopara_per_item_info):
        atoms.positions[:, 2] = atoms.positions[:, 2] * scale + offset
        atoms.info["tag"] = tag
        atoms.info["pid"] = os.getpid()
        atoms.info["chunk_len"] = len(atoms_list)
        atoms.info["item_i"] = info["item_i"]
        out.append(atoms)
    return out


documented = autoparallelized(num_python_subprocesses=2, num_inputs_per_python_subprocess=3)(documented_op)


@autoparallelized
def bare_decorated(atoms_list, factor=2):
    for atoms in atoms_list:
        atoms.info["scaled"] = factor * atoms.info["label"]
        atoms.info["pid"] = os.getpid()
    return atoms_list


def wfl_style_wrapper(*args, **kwargs):
    # how wfl writes a wrapper by hand
    return autoparallelize(record_op, *args, default_autopara_info={"num_inputs_per_python_subprocess": 3},
                           **kwargs)


# --- 1. order and identity of outputs --------------------------------------------------


@pytest.fixture(scope="module")
def serial_reference(tmp_path_factory):
    """Outputs of serial runs, in memory and as files, that every other run must reproduce."""
    root = tmp_path_factory.mktemp("reference")
    reference = {}
    for name, make_inputs in [("flat", lambda: make_list(9)), ("nested", nested_inputs)]:
        reference[name] = list(autoparallelize(shift_op, ConfigSet(make_inputs()), OutputSpec(),
                                               autopara_info=para(0)))
        path = root / f"{name}.xyz"
        reference[name + "_set"] = autoparallelize(shift_op, ConfigSet(make_inputs()), OutputSpec(path),
                                                   autopara_info=para(0))
        reference[name + "_bytes"] = path.read_bytes()
    return reference


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("nproc", NPROCS)
def test_flat_inputs_same_outputs_in_order_memory_and_file(tmp_path, serial_reference, nproc, chunk):
    n = 9
    reference = serial_reference["flat"]
    reference_file_set, reference_bytes = serial_reference["flat_set"], serial_reference["flat_bytes"]

    result = autoparallelize(shift_op, ConfigSet(make_list(n)), OutputSpec(), autopara_info=para(nproc, chunk))
    out = list(result)
    assert labels(out) == list(range(n))
    assert [a.info["double"] for a in out] == [2 * i for i in range(n)]
    np.testing.assert_allclose([a.positions[0, 2] for a in out], [0.1 * i + 0.25 for i in range(n)])
    assert [list(a.arrays["lab"]) for a in out] == [[i] for i in range(n)]
    assert_same_atoms(out, reference)

    out_file = tmp_path / "out.xyz"
    result = autoparallelize(shift_op, ConfigSet(make_list(n)), OutputSpec(out_file),
                             autopara_info=para(nproc, chunk))
    assert result.files() == [out_file]
    assert out_file.read_bytes() == reference_bytes
    assert_same_atoms(result, reference_file_set)
    assert_same_atoms(result, reference, exact=False)
    # only the final file, no partial left over
    assert listing(tmp_path) == ["out.xyz"]


def nested_inputs():
    a = make_list(9)
    return [[a[0], a[1], a[2]], [a[3]], [a[4], [a[5], a[6]], a[7]], a[8]]


NESTED_SHAPE = [[0, 1, 2], [3], [4, [5, 6], 7], 8]


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("nproc", NPROCS)
def test_nested_inputs_keep_their_nesting(tmp_path, serial_reference, nproc, chunk):
    inputs = ConfigSet(nested_inputs())
    assert shape(inputs) == NESTED_SHAPE
    input_locs = [a.info["_ConfigSet_loc"] for a in ConfigSet(nested_inputs())]
    reference = serial_reference["nested"]

    result = autoparallelize(shift_op, ConfigSet(nested_inputs()), OutputSpec(), autopara_info=para(nproc, chunk))
    assert shape(result) == NESTED_SHAPE
    out = list(result)
    assert [a.info["_ConfigSet_loc"] for a in out] == input_locs
    assert_same_atoms(out, reference)

    out_file = tmp_path / "out.xyz"
    result = autoparallelize(shift_op, ConfigSet(nested_inputs()), OutputSpec(out_file),
                             autopara_info=para(nproc, chunk))
    assert out_file.read_bytes() == serial_reference["nested_bytes"]
    assert shape(ConfigSet(out_file)) == NESTED_SHAPE
    assert shape(result) == NESTED_SHAPE
    assert_same_atoms(result, reference, exact=False)


@pytest.fixture
def two_input_files(tmp_path):
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    ase.io.write(in_dir / "in.0.xyz", make_list(3), format="extxyz")
    ase.io.write(in_dir / "in.1.xyz", make_list(4, start=3), format="extxyz")
    return [in_dir / "in.0.xyz", in_dir / "in.1.xyz"]


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("nproc", NPROCS)
def test_multi_file_inputs_go_to_matching_output_files(tmp_path, two_input_files, nproc, chunk):
    ref_dir, out_dir = tmp_path / "ref", tmp_path / "out"
    names = ["out.0.xyz", "out.1.xyz"]
    autoparallelize(shift_op, ConfigSet(two_input_files), OutputSpec(names, file_root=ref_dir),
                    autopara_info=para(0))

    result = autoparallelize(shift_op, ConfigSet(two_input_files), OutputSpec(names, file_root=out_dir),
                             autopara_info=para(nproc, chunk))
    assert result.files() == [out_dir / name for name in names]
    assert labels(ConfigSet(out_dir / "out.0.xyz")) == [0, 1, 2]
    assert labels(ConfigSet(out_dir / "out.1.xyz")) == [3, 4, 5, 6]
    for name in names:
        assert (out_dir / name).read_bytes() == (ref_dir / name).read_bytes()
    assert shape(result) == [[0, 1, 2], [3, 4, 5, 6]]
    assert listing(out_dir) == names

    # into memory, the file structure becomes the first level of nesting
    in_memory = autoparallelize(shift_op, ConfigSet(two_input_files), OutputSpec(),
                                autopara_info=para(nproc, chunk))
    assert shape(in_memory) == [[0, 1, 2], [3, 4, 5, 6]]
    assert_same_atoms(in_memory, result, exact=False)
    assert_same_atoms(in_memory, autoparallelize(shift_op, ConfigSet(two_input_files), OutputSpec(),
                                                 autopara_info=para(0)))


@pytest.mark.parametrize("nproc", [0, 2])
def test_op_returning_several_structures_per_input(tmp_path, nproc):
    result = autoparallelize(two_outputs_op, ConfigSet(make_list(3)), OutputSpec(tmp_path / "out.xyz"),
                             autopara_info=para(nproc, 2))
    out = list(ConfigSet(tmp_path / "out.xyz"))
    assert labels(out) == [0, 0, 1, 1, 2, 2]
    assert [a.info.get("copy", False) for a in out] == [False, True] * 3
    assert shape(result) == [[0, 0], [1, 1], [2, 2]]


# --- 2. arguments -----------------------------------------------------------------------


@pytest.mark.parametrize("nproc", [0, 2])
def test_inputs_outputs_positional_or_keyword(nproc):
    positional = list(autoparallelize(shift_op, ConfigSet(make_list(5)), OutputSpec(),
                                      autopara_info=para(nproc, 2)))
    keywords = list(autoparallelize(shift_op, inputs=ConfigSet(make_list(5)), outputs=OutputSpec(),
                                    autopara_info=para(nproc, 2)))
    mixed = list(autoparallelize(shift_op, ConfigSet(make_list(5)), outputs=OutputSpec(),
                                 autopara_info=para(nproc, 2)))
    assert labels(positional) == list(range(5))
    assert_same_atoms(positional, keywords)
    assert_same_atoms(positional, mixed)
    assert autoparallelize(shift_op, inputs=ConfigSet(make_list(2)), outputs=None) is None


def test_missing_inputs_or_outputs_is_a_type_error():
    with pytest.raises(TypeError, match="outputs"):
        autoparallelize(shift_op, inputs=ConfigSet(make_list(2)))
    with pytest.raises(TypeError, match="outputs"):
        autoparallelize(shift_op, ConfigSet(make_list(2)))
    with pytest.raises(TypeError, match="inputs"):
        autoparallelize(shift_op)


@pytest.mark.parametrize("nproc", [0, 2])
def test_extra_positional_and_keyword_args_reach_the_op(nproc):
    out = list(autoparallelize(shift_op, ConfigSet(make_list(4)), OutputSpec(), 1.5, note="hello",
                               autopara_info=para(nproc, 3)))
    np.testing.assert_allclose([a.positions[0, 2] for a in out], [0.1 * i + 1.5 for i in range(4)])
    assert [a.info["note"] for a in out] == ["hello"] * 4
    out = list(autoparallelize(shift_op, ConfigSet(make_list(2)), OutputSpec(), dz=-1.0,
                               autopara_info=para(nproc)))
    np.testing.assert_allclose([a.positions[0, 2] for a in out], [-1.0, -0.9])


@pytest.mark.parametrize("nproc", [0, 2])
def test_iterable_arg_as_position_and_as_keyword(nproc):
    out = list(autoparallelize(factor_first_op, ConfigSet(make_list(5)), OutputSpec(), 3,
                               autopara_info=para(nproc, 2, iterable_arg=1)))
    assert [a.info["scaled"] for a in out] == [0, 3, 6, 9, 12]
    out = list(autoparallelize(keyword_op, ConfigSet(make_list(5)), OutputSpec(), 4,
                               autopara_info=para(nproc, 2, iterable_arg="configs")))
    assert [a.info["scaled"] for a in out] == [0, 4, 8, 12, 16]
    with pytest.raises(TypeError, match="iterable_arg=2"):
        autoparallelize(factor_first_op, ConfigSet(make_list(1)), OutputSpec(), 3,
                        autopara_info=para(nproc, iterable_arg=2))


@pytest.mark.parametrize("nproc", [0, 2])
def test_any_iterable_as_inputs(tmp_path, nproc):
    generator = (make_atoms(i) for i in range(7))
    assert labels(autoparallelize(record_op, generator, OutputSpec(), autopara_info=para(nproc, 3))) == \
        list(range(7))
    plain_list = make_list(4)
    assert labels(autoparallelize(record_op, plain_list, OutputSpec(), autopara_info=para(nproc, 3))) == \
        list(range(4))
    # the caller's structures are not changed by the op, even in serial
    assert all("pid" not in a.info for a in plain_list)

    # range of ints, no outputs: only the side effects count
    result = autoparallelize(marker_op, range(11), None, str(tmp_path), autopara_info=para(nproc, 2))
    assert result is None
    assert listing(tmp_path) == sorted(f"done-{i}" for i in range(11))
    pids = {int((tmp_path / f"done-{i}").read_text()) for i in range(11)}
    assert (pids == {os.getpid()}) if nproc == 0 else (os.getpid() not in pids)


# --- 3. AutoparaInfo --------------------------------------------------------------------


def test_autoparainfo_unknown_key_is_rejected_everywhere():
    with pytest.raises(ValueError, match="num_python_subprocess"):
        AutoparaInfo(num_python_subprocess=2)          # typo
    # wfl's remote-job options: accepted when empty (wfl scripts pass None), refused otherwise
    assert AutoparaInfo(remote_info=None, remote_label=None, hash_ignore=[]).as_dict() == AutoparaInfo().as_dict()
    with pytest.raises(ValueError, match="remote job submission"):
        AutoparaInfo(remote_label="run_1")
    with pytest.raises(ValueError, match="'cluster' is not a queuing system"):
        bad = {"sys_name": "cluster", "job_name": "j", "resources": {"max_time": "1h"}}
        AutoparaInfo(remote_info=bad).with_defaults()
    info = AutoparaInfo()
    with pytest.raises(ValueError, match="bogus"):
        info.bogus = 1
    with pytest.raises(ValueError, match="bogus"):
        autoparallelize(record_op, ConfigSet(make_list(2)), OutputSpec(), autopara_info={"bogus": 1})
    with pytest.raises(ValueError, match="bogus"):
        autoparallelize(record_op, ConfigSet(make_list(2)), OutputSpec(), default_autopara_info={"bogus": 1})
    with pytest.raises(TypeError, match="autopara_info"):
        autoparallelize(record_op, ConfigSet(make_list(2)), OutputSpec(), autopara_info=[("bogus", 1)])


def chunk_lens(result):
    return [a.info["chunk_len"] for a in result]


def test_autoparainfo_precedence_caller_then_wrapper_default_then_class_default():
    def run(**kwargs):
        return autoparallelize(record_op, ConfigSet(make_list(7)), OutputSpec(), **kwargs)

    assert chunk_lens(run()) == [1] * 7                                        # class default
    assert chunk_lens(run(default_autopara_info={"num_inputs_per_python_subprocess": 3})) == [3, 3, 3, 3, 3, 3, 1]
    assert chunk_lens(run(default_autopara_info={"num_inputs_per_python_subprocess": 3},
                          autopara_info={"num_inputs_per_python_subprocess": 2})) == [2, 2, 2, 2, 2, 2, 1]
    assert chunk_lens(run(default_autopara_info={"num_inputs_per_python_subprocess": 3},
                          autopara_info=AutoparaInfo(num_inputs_per_python_subprocess=4))) == [4] * 4 + [3] * 3
    # an AutoparaInfo that does not set an option leaves it to the wrapper's default
    result = run(default_autopara_info={"num_inputs_per_python_subprocess": 3, "num_python_subprocesses": 2},
                 autopara_info=AutoparaInfo(num_python_subprocesses=0))
    assert chunk_lens(result) == [3, 3, 3, 3, 3, 3, 1]
    assert {a.info["pid"] for a in result} == {os.getpid()}
    result = run(default_autopara_info={"num_python_subprocesses": 2})
    assert os.getpid() not in {a.info["pid"] for a in result}
    # the hand-written wrapper of wfl style
    assert chunk_lens(wfl_style_wrapper(ConfigSet(make_list(4)), OutputSpec())) == [3, 3, 3, 1]
    assert chunk_lens(wfl_style_wrapper(ConfigSet(make_list(4)), OutputSpec(),
                                        autopara_info={"num_inputs_per_python_subprocess": 4})) == [4] * 4


def test_autoparainfo_values_and_defaults():
    info = AutoparaInfo(num_inputs_per_python_subprocess=5)
    assert info.num_inputs_per_python_subprocess == 5
    assert info.num_python_subprocesses is None
    assert info.skip_failed is True
    resolved = info.with_defaults({"num_inputs_per_python_subprocess": 2, "skip_failed": False})
    assert resolved.num_inputs_per_python_subprocess == 5
    assert resolved.skip_failed is False
    info.update_defaults({"iterable_arg": 1})
    assert info.iterable_arg == 1
    assert info.num_inputs_per_python_subprocess == 5


@pytest.mark.parametrize("bad", [
    {"num_inputs_per_python_subprocess": 0},
    {"num_inputs_per_python_subprocess": -2},
    {"num_python_subprocesses": -1},
    {"num_python_subprocesses": 1.5},
    {"initializer": init_worker},
])
def test_autoparainfo_bad_values(tmp_path, bad):
    with pytest.raises(ValueError):
        autoparallelize(counting_op, ConfigSet(make_list(2)), OutputSpec(), str(tmp_path), autopara_info=bad)
    with pytest.raises(ValueError):
        autoparallelize(counting_op, ConfigSet(make_list(2)), OutputSpec(), str(tmp_path), default_autopara_info=bad)
    assert listing(tmp_path) == []      # the op never ran


# --- 4. environment variable -------------------------------------------------------------


def test_env_var_sets_the_number_of_workers(monkeypatch):
    monkeypatch.setenv(ENV, "2")
    result = list(autoparallelize(record_op, ConfigSet(make_list(6)), OutputSpec()))
    pids = {a.info["pid"] for a in result}
    assert os.getpid() not in pids
    assert 1 <= len(pids) <= 2
    assert labels(result) == list(range(6))
    # a value given by the caller wins over the env var
    result = autoparallelize(record_op, ConfigSet(make_list(3)), OutputSpec(), autopara_info=para(0))
    assert {a.info["pid"] for a in result} == {os.getpid()}
    monkeypatch.setenv(ENV, "0")
    result = autoparallelize(record_op, ConfigSet(make_list(3)), OutputSpec())
    assert {a.info["pid"] for a in result} == {os.getpid()}


@pytest.mark.parametrize("value", ["two", "-1", "1.5"])
def test_bad_env_var_is_a_value_error_naming_it(monkeypatch, value):
    monkeypatch.setenv(ENV, value)
    with pytest.raises(ValueError, match=ENV):
        autoparallelize(record_op, ConfigSet(make_list(2)), OutputSpec())


# --- 5. reproducible randomness ----------------------------------------------------------


def draws_of(seed_or_rng, nproc, chunk, n=8):
    rng = np.random.default_rng(seed_or_rng) if isinstance(seed_or_rng, int) else seed_or_rng
    out = list(autoparallelize(draw_op, ConfigSet(make_list(n)), OutputSpec(), rng=rng,
                               autopara_info=para(nproc, chunk)))
    assert [a.info["item_i"] for a in out] == list(range(n))
    assert labels(out) == list(range(n))
    return np.array([a.info["draws"] for a in out])


def test_rng_draws_are_the_same_for_any_processes_and_chunks():
    reference = draws_of(1234, 0, 1)
    for nproc in NPROCS:
        for chunk in CHUNKS:
            np.testing.assert_array_equal(draws_of(1234, nproc, chunk), reference, err_msg=f"{nproc=} {chunk=}")
    # every item has its own stream: no number is drawn twice
    assert len(set(reference.ravel().tolist())) == reference.size
    # same seed, same draws; another seed, other draws
    np.testing.assert_array_equal(draws_of(1234, 2, 3), reference)
    assert not np.any(draws_of(4321, 0, 1) == reference)


def test_reusing_one_generator_gives_new_but_reproducible_draws():
    rng = np.random.default_rng(99)
    first, second = draws_of(rng, 0, 2), draws_of(rng, 2, 1)
    assert not np.any(first == second)
    rng = np.random.default_rng(99)
    np.testing.assert_array_equal(draws_of(rng, 2, 3), first)
    np.testing.assert_array_equal(draws_of(rng, 0, 1), second)


def test_per_item_info_without_rng_has_item_index():
    out = list(autoparallelize(draw_op, ConfigSet(make_list(5)), OutputSpec(), autopara_info=para(2, 2)))
    assert [a.info["item_i"] for a in out] == list(range(5))
    assert not any(a.info["has_rng"] for a in out)


def test_rng_for_op_without_per_item_info_warns():
    with pytest.warns(UserWarning, match="rng"):
        out = autoparallelize(shift_op, ConfigSet(make_list(3)), OutputSpec(), rng=np.random.default_rng(1))
    assert labels(out) == [0, 1, 2]
    with pytest.raises(TypeError, match="rng"):
        autoparallelize(draw_op, ConfigSet(make_list(3)), OutputSpec(), rng=1234)


def test_no_warning_without_rng():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        autoparallelize(shift_op, ConfigSet(make_list(2)), OutputSpec())


# --- 6. initializer ---------------------------------------------------------------------


def test_initializer_runs_once_per_worker_before_any_chunk(tmp_path):
    assert _INIT_STATE is None
    result = list(autoparallelize(init_state_when_all_started_op, ConfigSet(make_list(10)), OutputSpec(),
                                  str(tmp_path), 2,
                                  autopara_info=para(2, 1, initializer=(init_worker, (str(tmp_path), "ready")))))
    assert labels(result) == list(range(10))
    initialized = marker_pids(tmp_path, "init-")
    assert len(initialized) == 2
    assert os.getpid() not in initialized
    assert {a.info["pid"] for a in result} <= set(initialized)
    assert [a.info["init_state"] for a in result] == ["ready"] * 10
    assert _INIT_STATE is None          # it ran in the workers only


def test_initializer_runs_once_in_the_calling_process_when_serial(tmp_path):
    global _INIT_STATE
    assert _INIT_STATE is None
    try:
        result = list(autoparallelize(init_state_op, ConfigSet(make_list(4)), OutputSpec(),
                                      autopara_info=para(0, 1, initializer=[init_worker, [str(tmp_path), "here"]])))
        assert marker_pids(tmp_path, "init-") == [os.getpid()]
        assert [a.info["init_state"] for a in result] == ["here"] * 4
        assert _INIT_STATE == "here"
    finally:
        _INIT_STATE = None


def test_initializer_that_raises_stops_the_call(tmp_path):
    with pytest.raises(WorkerInitializerError, match="no potential here") as info:
        autoparallelize(init_state_op, ConfigSet(make_list(6)), OutputSpec(tmp_path / "out.xyz"),
                        autopara_info=para(2, 1, initializer=(failing_initializer, ("no potential here",))))
    assert "failing_initializer" in str(info.value.__cause__)
    assert listing(tmp_path) == []
    # serially, the initializer's own exception
    with pytest.raises(RuntimeError, match="no potential here"):
        autoparallelize(init_state_op, ConfigSet(make_list(6)), OutputSpec(tmp_path / "out.xyz"),
                        autopara_info=para(0, 1, initializer=(failing_initializer, ("no potential here",))))
    assert listing(tmp_path) == []


# --- 7. failed items and bad outputs ------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize("nproc", [0, 2])
def test_skip_failed_leaves_out_none_outputs(tmp_path, nproc, chunk):
    out = autoparallelize(odd_fails_op, ConfigSet(make_list(9)), OutputSpec(), autopara_info=para(nproc, chunk))
    assert labels(out) == [0, 2, 4, 6, 8]
    autoparallelize(odd_fails_op, ConfigSet(make_list(9)), OutputSpec(tmp_path / "out.xyz"),
                    autopara_info=para(nproc, chunk))
    assert labels(ConfigSet(tmp_path / "out.xyz")) == [0, 2, 4, 6, 8]
    # nested: the outputs keep the locations of their inputs
    nested = autoparallelize(odd_fails_op, ConfigSet(nested_inputs()), OutputSpec(),
                             autopara_info=para(nproc, chunk))
    assert [a.info["_ConfigSet_loc"] for a in nested] == [" / 0 / 0", " / 0 / 2", " / 2 / 0", " / 2 / 1 / 1",
                                                         " / 3"]
    assert labels(nested) == [0, 2, 4, 6, 8]


@pytest.mark.parametrize("nproc", [0, 2])
def test_op_returning_none_for_the_whole_chunk_skips_all(tmp_path, nproc):
    out = autoparallelize(returns_none_op, ConfigSet(make_list(4)), OutputSpec(tmp_path / "out.xyz"),
                          autopara_info=para(nproc, 2))
    assert list(out) == []
    assert (tmp_path / "out.xyz").exists()


@pytest.mark.parametrize("nproc", [0, 2])
def test_skip_failed_false_raises(tmp_path, nproc):
    with pytest.raises(AutoparallelizeError) as info:
        autoparallelize(odd_fails_op, ConfigSet(make_list(5)), OutputSpec(),
                        autopara_info=para(nproc, 2, skip_failed=False))
    assert [f.index for f in info.value.failures] == [1, 3]
    assert all(isinstance(f.exception, OpOutputError) for f in info.value.failures)
    with pytest.raises(AutoparallelizeError, match="odd_fails_op"):
        autoparallelize(odd_fails_op, ConfigSet(make_list(5)), OutputSpec(tmp_path / "out.xyz"),
                        autopara_info=para(nproc, 2, skip_failed=False))
    assert listing(tmp_path) == []


@pytest.mark.parametrize("nproc", [0, 2])
def test_op_output_of_wrong_length_or_type(tmp_path, nproc):
    with pytest.raises(AutoparallelizeError, match="wrong_length_op") as info:
        autoparallelize(wrong_length_op, ConfigSet(make_list(4)), OutputSpec(), autopara_info=para(nproc, 2))
    # each chunk of 2 gave 3 outputs: every item of it fails with that, none is run alone
    assert [f.index for f in info.value.failures] == [0, 1, 2, 3]
    assert all(isinstance(f.exception, OpOutputError) for f in info.value.failures)
    assert "3 outputs for 2 input items" in info.value.failures[0].reason
    with pytest.raises(AutoparallelizeError, match="not_a_list_op"):
        autoparallelize(not_a_list_op, ConfigSet(make_list(4)), OutputSpec(), autopara_info=para(nproc, 2))
    with pytest.raises(AutoparallelizeError, match="string_op") as info:
        autoparallelize(string_op, ConfigSet(make_list(4)), OutputSpec(tmp_path / "out.xyz"),
                        autopara_info=para(nproc, 2))
    assert "str" in str(info.value)
    assert listing(tmp_path) == []


def test_bad_inputs_or_outputs_are_type_errors(tmp_path):
    with pytest.raises(TypeError, match="iterable"):
        autoparallelize(record_op, 5, OutputSpec())
    with pytest.raises(TypeError, match="OutputSpec"):
        autoparallelize(record_op, ConfigSet(make_list(2)), str(tmp_path / "out.xyz"))
    assert listing(tmp_path) == []


# --- 8. dead workers and exceptions ------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize("how, exitcode, words", [("exit", 7, "exit code 7"),
                                                  ("kill", -signal.SIGKILL, "SIGKILL")])
def test_dead_worker_fails_only_its_item_after_retries(tmp_path, how, exitcode, words, chunk):
    out_dir, pid_dir = tmp_path / "out", tmp_path / "pids"
    out_dir.mkdir()
    pid_dir.mkdir()
    with pytest.raises(AutoparallelizeError) as info:
        autoparallelize(die_on_5_op, ConfigSet(make_list(10)), OutputSpec(out_dir / "out.xyz"), str(pid_dir), how,
                        autopara_info=para(2, chunk))
    [failure] = info.value.failures
    assert failure.index == 5
    assert words in failure.reason and "3 times" in failure.reason     # first run + 2 retries
    assert isinstance(failure.exception, WorkerDiedError) and failure.exception.exitcode == exitcode
    assert "item 5" in str(info.value) and "die_on_5_op" in str(info.value)
    # errors="raise": no final output and no partial file
    assert listing(out_dir) == []
    # every worker is gone
    pids = marker_pids(pid_dir, "pid-")
    assert pids and os.getpid() not in pids
    assert failure.exception.pid in pids
    assert not any(process_running(pid) for pid in pids)
    assert worker_children() == []


@pytest.mark.parametrize("chunk", [1, 3])
def test_dead_worker_with_errors_skip_keeps_every_other_output(tmp_path, chunk):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    with pytest.warns(FailedItemsWarning, match="item 5"):
        result = autoparallelize(die_on_5_op, ConfigSet(make_list(10)), OutputSpec(tmp_path / "out.xyz"),
                                 str(pid_dir), "kill", autopara_info=para(2, chunk, errors="skip"))
    assert labels(result) == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert [f.index for f in result.failures] == [5]
    assert worker_children() == []


@pytest.mark.parametrize("nproc", [0, 2])
def test_op_exception_fails_only_its_item_with_type_and_traceback(tmp_path, nproc):
    with pytest.raises(AutoparallelizeError, match="label 3 is refused") as info:
        autoparallelize(raise_on_3_op, ConfigSet(make_list(8)), OutputSpec(tmp_path / "out.xyz"),
                        autopara_info=para(nproc, 2))
    [failure] = info.value.failures
    assert failure.index == 3
    assert failure.reason == "LabelError: label 3 is refused"
    assert isinstance(failure.exception, LabelError)
    assert "raise_on_3_op" in failure.traceback
    if nproc:
        assert isinstance(failure.exception.__cause__, RemoteTraceback)
    assert listing(tmp_path) == []


# --- 9. skipping finished work -------------------------------------------------------------


def calls(directory):
    return len([p for p in directory.iterdir() if p.name.startswith("call-")])


@pytest.mark.parametrize("nproc", [0, 2])
def test_existing_output_file_is_reused_unless_overwrite(tmp_path, nproc):
    calls_dir = tmp_path / "calls"
    calls_dir.mkdir()
    out = tmp_path / "out.xyz"
    first = autoparallelize(counting_op, ConfigSet(make_list(6)), OutputSpec(out), str(calls_dir),
                            autopara_info=para(nproc, 2))
    assert calls(calls_dir) == 3
    content = out.read_bytes()

    again = autoparallelize(counting_op, ConfigSet(make_list(6)), OutputSpec(out), str(calls_dir),
                            autopara_info=para(nproc, 2))
    assert calls(calls_dir) == 3           # the op did not run
    assert again.files() == [out]
    assert_same_atoms(again, first)
    assert out.read_bytes() == content

    # an output edited after the run is not handed back: the journal rebuilds it, without the op
    ase.io.write(out, make_list(2, start=100), format="extxyz")
    rebuilt = autoparallelize(counting_op, ConfigSet(make_list(6)), OutputSpec(out), str(calls_dir),
                              autopara_info=para(nproc, 2))
    assert labels(rebuilt) == list(range(6))
    assert calls(calls_dir) == 3
    assert out.read_bytes() == content

    # without the journal (cache=False), wfl's behaviour: the existing file is returned as it is
    ase.io.write(out, make_list(2, start=100), format="extxyz")
    reused = autoparallelize(counting_op, ConfigSet(make_list(6)), OutputSpec(out), str(calls_dir),
                             autopara_info=para(nproc, 2, cache=False))
    assert labels(reused) == [100, 101]
    assert calls(calls_dir) == 3

    rerun = autoparallelize(counting_op, ConfigSet(make_list(6)), OutputSpec(out, overwrite=True), str(calls_dir),
                            autopara_info=para(nproc, 2))
    assert calls(calls_dir) == 6
    assert labels(rerun) == list(range(6))
    assert out.read_bytes() == content


@pytest.mark.parametrize("nproc", [0, 2])
def test_existing_output_files_are_reused_unless_overwrite(tmp_path, two_input_files, nproc):
    calls_dir, out_dir = tmp_path / "calls", tmp_path / "out"
    calls_dir.mkdir()
    names = ["a.xyz", "b.xyz"]

    def run(overwrite=False):
        return autoparallelize(counting_op, ConfigSet(two_input_files),
                               OutputSpec(names, file_root=out_dir, overwrite=overwrite), str(calls_dir),
                               autopara_info=para(nproc, 1))

    first = run()
    assert calls(calls_dir) == 7
    assert shape(first) == [[0, 1, 2], [3, 4, 5, 6]]
    again = run()
    assert calls(calls_dir) == 7
    assert again.files() == [out_dir / name for name in names]
    assert shape(again) == [[0, 1, 2], [3, 4, 5, 6]]
    rerun = run(overwrite=True)
    assert calls(calls_dir) == 14
    assert shape(rerun) == [[0, 1, 2], [3, 4, 5, 6]]
    # only some files present: the journal rebuilds the missing one, without the op
    (out_dir / "b.xyz").unlink()
    assert shape(run()) == [[0, 1, 2], [3, 4, 5, 6]]
    assert calls(calls_dir) == 14
    assert listing(out_dir) == ["a.xyz", "b.xyz"]
    # without a journal: not finished, and not to be overwritten silently
    (out_dir / "b.xyz").unlink()
    with pytest.raises(FileExistsError, match="a.xyz"):
        autoparallelize(counting_op, ConfigSet(two_input_files), OutputSpec(names, file_root=out_dir),
                        str(calls_dir), autopara_info=para(nproc, 1, cache=False))
    assert calls(calls_dir) == 14
    assert listing(out_dir) == ["a.xyz"]


# --- 10. decorator, docstrings and import paths ----------------------------------------------


def test_decorated_wrapper_signature_and_doc():
    params = list(inspect.signature(documented).parameters)
    assert params[:2] == ["inputs", "outputs"]
    assert params == ["inputs", "outputs", "scale", "offset", "tag", "autopara_info", "rng"]
    assert "atoms_list" not in params and "_autopara_per_item_info" not in params
    assert inspect.signature(documented).parameters["autopara_info"].default is None

    doc = documented.__doc__
    for entry in ["inputs :", "outputs :", "autopara_info :", "scale :", "offset :", "tag :"]:
        assert entry in doc
    assert "atoms_list :" not in doc
    assert "_autopara_per_item_info" not in doc
    assert doc.startswith("Scale the z coordinate")
    assert documented.op is documented_op
    assert documented.__name__ == "documented_op"

    bare_params = list(inspect.signature(bare_decorated).parameters)
    assert bare_params == ["inputs", "outputs", "factor", "autopara_info"]
    assert "inputs :" in bare_decorated.__doc__ and "autopara_info :" in bare_decorated.__doc__
    assert bare_decorated.op.__name__ == "bare_decorated"


def test_decorated_wrapper_runs_in_parallel_with_its_defaults(tmp_path):
    result = documented(ConfigSet(make_list(7)), OutputSpec(tmp_path / "out.xyz"), 2.0, offset=1.0, tag="t")
    out = list(result)
    assert labels(out) == list(range(7))
    assert [a.info["item_i"] for a in out] == list(range(7))
    np.testing.assert_allclose([a.positions[0, 2] for a in out], [0.2 * i + 1.0 for i in range(7)])
    assert [a.info["tag"] for a in out] == ["t"] * 7
    assert chunk_lens(out) == [3, 3, 3, 3, 3, 3, 1]
    pids = {a.info["pid"] for a in out}
    assert os.getpid() not in pids and len(pids) <= 2
    # the caller's options win over the decorator's
    out = documented(ConfigSet(make_list(4)), OutputSpec(), 1.0, autopara_info={"num_python_subprocesses": 0,
                                                                                 "num_inputs_per_python_subprocess": 4})
    assert chunk_lens(out) == [4] * 4
    assert {a.info["pid"] for a in out} == {os.getpid()}
    # keyword inputs/outputs through the wrapper
    out = bare_decorated(inputs=ConfigSet(make_list(3)), outputs=OutputSpec(), factor=5)
    assert [a.info["scaled"] for a in out] == [0, 5, 10]
    # the original op still works on a plain list
    assert labels(documented.op(make_list(2), 1.0, _autopara_per_item_info=[{"item_i": 0}, {"item_i": 1}])) == [0, 1]


def test_decorator_rejects_unknown_default_option_at_decoration_time():
    with pytest.raises(ValueError, match="num_python_subprocess"):
        autoparallelized(num_python_subprocess=2)           # typo
    with pytest.raises(ValueError, match="bogus"):
        autoparallelized(record_op, bogus=1)


def test_autoparallelize_docstring_sets_the_wrapper_doc():
    def wrapper(*args, **kwargs):
        return autoparallelize(documented_op, *args, **kwargs)

    returned = autoparallelize_docstring(wrapper, documented_op, "Atoms")
    assert wrapper.__doc__ == returned
    assert "inputs : iterable of Atoms" in wrapper.__doc__
    assert "outputs : OutputSpec" in wrapper.__doc__
    assert "autopara_info :" in wrapper.__doc__
    assert "scale :" in wrapper.__doc__ and "tag :" in wrapper.__doc__
    assert "atoms_list :" not in wrapper.__doc__
    assert "ConfigSet" in wrapper.__doc__.split("Returns")[1]


def test_import_paths():
    from wfl_like import autoparallelize as ap_from_package
    from wfl_like.autoparallelize import AutoparaInfo as AI
    from wfl_like.autoparallelize import autoparallelize as ap_function

    assert AI is AutoparaInfo
    assert wfl_like.AutoparaInfo is AutoparaInfo
    assert wfl_like.autoparallelized is autoparallelized
    assert callable(ap_from_package) and callable(ap_function)
    for ap in (ap_from_package, ap_function):
        out = ap(record_op, ConfigSet(make_list(5)), OutputSpec(), autopara_info=AI(num_python_subprocesses=2,
                                                                                   num_inputs_per_python_subprocess=2))
        assert labels(out) == list(range(5))
        assert chunk_lens(out) == [2, 2, 2, 2, 1]
        assert os.getpid() not in {a.info["pid"] for a in out}


# --- ops that end their process or nest ------------------------------------------------


def exit_op(items):
    sys.exit(3)


@pytest.mark.parametrize("nproc", [0, 2])
def test_sys_exit_in_op_is_an_error_not_a_quiet_exit(nproc):
    with pytest.raises(RuntimeError, match=r"called sys.exit\(3\)") as info:
        autoparallelize(exit_op, ConfigSet(make_list(3)), OutputSpec(), autopara_info=para(nproc))
    assert "exit_op" in str(info.value)


def tag_pid_op(items):
    for at in items:
        at.info["inner_pid"] = os.getpid()
    return items


def nesting_op(items):
    # an op that itself runs an autoparallelized op, asking for workers
    inner = autoparallelize(tag_pid_op, items, OutputSpec(), autopara_info=para(2))
    for at in inner:
        at.info["outer_pid"] = os.getpid()
    return list(inner)


def test_nested_autoparallelize_runs_serially_inside_a_worker():
    result = list(autoparallelize(nesting_op, ConfigSet(make_list(6)), OutputSpec(),
                                  autopara_info=para(2, chunk=3)))
    assert labels(result) == labels(make_list(6))
    for at in result:
        assert at.info["inner_pid"] == at.info["outer_pid"] != os.getpid()


def test_closed_outputspec_is_refused_before_any_work(tmp_path):
    outputs = OutputSpec(tmp_path / "out.xyz")
    outputs.close()
    marker_dir = tmp_path / "calls"
    marker_dir.mkdir()
    with pytest.raises(ValueError, match="already closed"):
        autoparallelize(record_op, ConfigSet(make_list(2)), outputs, autopara_info=para(0))


def always_fails_op(items):
    raise KeyError("missing_parameter")


@pytest.mark.parametrize("nproc", [0, 2])
def test_same_failure_on_every_first_item_stops_the_run_early(tmp_path, nproc):
    calls_dir = tmp_path / "calls"
    calls_dir.mkdir()
    inputs = (make_atoms(i) for i in range(100_000))      # far more than will be read
    with pytest.raises(AutoparallelizeError, match="setup") as info:
        autoparallelize(always_fails_op, inputs, OutputSpec(tmp_path / "out.xyz"),
                        autopara_info=para(nproc, 2, errors="skip"))
    assert info.value.stopped_early
    assert 10 <= len(info.value.failures) < 100
    assert "KeyError" in str(info.value)
    assert not (tmp_path / "out.xyz").exists()


def first_only_op(items):
    return items[:1]       # drops every item but the first: wrong only for chunks of 2 or more


def test_wrong_length_is_not_hidden_by_running_items_alone():
    with pytest.raises(AutoparallelizeError, match="first_only_op") as info:
        autoparallelize(first_only_op, ConfigSet(make_list(6)), OutputSpec(), autopara_info=para(2, 3))
    assert [f.index for f in info.value.failures] == list(range(6))
    assert "1 outputs for 3 input items" in info.value.failures[0].reason
