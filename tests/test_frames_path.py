"""Inputs in extended-XYZ files travel as byte ranges: the workers read the frames, run the op and
render the outputs; the driver writes the text.  Whatever runs the chunks, the output files are,
byte for byte, those of the path where the driver parses the inputs and sends the structures."""

import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import uuid
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import ase.io
import ase.io.extxyz
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

from helpers import BIN, MPIEXEC
from wfl_like import ConfigSet, OutputSpec
from wfl_like.autoparallelize import autoparallelize
from wfl_like.autoparallelize.frame_items import FrameItem, frame_items
from wfl_like.autoparallelize.resume import stored
from wfl_like.autoparallelize.resume.journal import Journal, journal_path
from wfl_like.autoparallelize.workers.frames_task import FramesCall
from wfl_like.autoparallelize.workers.opcall import OpCall
from wfl_like.configset import RenderedOutput
from wfl_like.errors import AutoparallelizeError, FailedItemsWarning, InputFileError

TESTS_DIR = Path(__file__).resolve().parent
N = 24


# --- inputs and operations ---------------------------------------------------------------------

def varied_structures(n, offset=0):
    """Structures with every kind of content an extended-XYZ file holds."""
    gen = np.random.default_rng(3 + offset)
    frames = []
    for i in range(n):
        kind = i % 6
        n_atoms = 1 + (i % 4)
        atoms = Atoms(["Cu", "Ag", "H", "O"][:n_atoms], positions=gen.random((n_atoms, 3)) * 3)
        if kind in (0, 3):
            atoms.cell = [[4.0, 0.1, 0.0], [0.3, 4.2, 0.0], [0.2, 0.1, 3.9]]     # not orthogonal
            atoms.pbc = True
        elif kind == 2:
            atoms.cell = [5.0, 6.0, 7.0]
            atoms.pbc = [True, False, True]
        # kind 1: a molecule without a cell
        atoms.info.update({"label": offset + i, "count": i * 7, "ratio": float(gen.random()), "flag": bool(i % 2),
                           "name": f"frame {i} ü", "vector": np.arange(3) + i, "matrix": gen.random((3, 3))})
        atoms.arrays["weights"] = gen.random(n_atoms)
        atoms.arrays["kinds"] = np.arange(n_atoms) + i
        if kind in (0, 4):
            atoms.calc = SinglePointCalculator(atoms, energy=float(gen.normal()), forces=gen.random((n_atoms, 3)),
                                               stress=gen.random(6))
        if kind == 3 and n_atoms > 1:
            atoms.set_constraint(FixAtoms(indices=[0]))
        frames.append(atoms)
    return frames


def write_inputs(path, frames):
    ase.io.write(path, frames, format="extxyz")
    return path


def varied_op(items, _autopara_per_item_info=None):
    """Draws, Nones, lists of structures, and failures, by label."""
    outputs = []
    for atoms, item in zip(items, _autopara_per_item_info):
        label = atoms.info["label"]
        if label % 7 == 3:
            raise ValueError(f"label {label} is refused")
        if label % 5 == 4:
            outputs.append(None)
            continue
        atoms.info["draw"] = float(item["rng"].normal())
        atoms.info["item_i"] = item["item_i"]
        atoms.info["seen_at"] = atoms.info["_ConfigSet_loc"]
        if label % 4 == 1:
            other = atoms.copy()
            other.positions += 0.5
            outputs.append([atoms, other])
        else:
            outputs.append(atoms)
    return outputs


def run(inputs, outputs, workers_read_files=True, nproc=0, chunk=1, **more):
    return autoparallelize(varied_op, inputs, outputs, rng=np.random.default_rng(11),
                           autopara_info={"num_python_subprocesses": nproc, "num_inputs_per_python_subprocess": chunk,
                                          "errors": "skip", "workers_read_files": workers_read_files, **more})


@pytest.fixture
def varied_file(tmp_path):
    return write_inputs(tmp_path / "varied.xyz", varied_structures(N))


def reference(tmp_path, inputs, name="reference.xyz", **spec):
    """The output of the path where the driver parses the inputs, serially."""
    out = tmp_path / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FailedItemsWarning)
        run(inputs, OutputSpec(out, **spec), workers_read_files=False)
    return out


def same_structures(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.get_chemical_symbols() == y.get_chemical_symbols()
        np.testing.assert_array_equal(x.positions, y.positions)
        np.testing.assert_array_equal(x.cell.array, y.cell.array)
        assert list(x.pbc) == list(y.pbc)
        assert x.info.keys() == y.info.keys()
        for key in x.info:
            np.testing.assert_array_equal(x.info[key], y.info[key])
        assert x.arrays.keys() == y.arrays.keys()
        for key in x.arrays:
            np.testing.assert_array_equal(x.arrays[key], y.arrays[key])


# --- byte for byte, whatever runs the chunks -------------------------------------------------------

@pytest.mark.parametrize("nproc, chunk", [(0, 1), (0, 3), (0, "auto"), (2, 1), (2, 3), (2, "auto")])
@pytest.mark.parametrize("cache", [False, None], ids=["no-journal", "journal"])
def test_outputs_are_those_of_the_driver_parsing_path(tmp_path, varied_file, nproc, chunk, cache):
    expected = reference(tmp_path, ConfigSet(varied_file))
    out = tmp_path / "frames.xyz"
    with pytest.warns(UserWarning) as warned:
        result = run(ConfigSet(varied_file), OutputSpec(out), nproc=nproc, chunk=chunk, cache=cache)
    assert out.read_bytes() == expected.read_bytes()
    # failures with errors="skip": the same items, for the same reason
    assert [(f.index, f.reason) for f in result.failures] == [(3, "ValueError: label 3 is refused"),
                                                             (10, "ValueError: label 10 is refused"),
                                                             (17, "ValueError: label 17 is refused")]
    assert any("failed on 3 input items" in str(w.message) for w in warned)
    same_structures(list(result), ase.io.read(expected, ":"))


def test_outputs_keep_the_input_locations_and_nesting(tmp_path, varied_file):
    out = tmp_path / "frames.xyz"
    with pytest.warns(UserWarning):
        run(ConfigSet(varied_file), OutputSpec(out), cache=False)
    written = ase.io.read(out, ":")
    # the op saw the location a ConfigSet iteration gives; a list output nests one level below it
    assert [a.info["seen_at"] for a in written if "seen_at" in a.info][:3] == [" / 0", " / 1", " / 1"]
    assert [a.info["_ConfigSet_loc"] for a in written][:4] == [" / 0", " / 1 / 0", " / 1 / 1", " / 2"]


def test_nested_locations_of_an_earlier_output_and_tags(tmp_path, varied_file):
    # an earlier run's output, nested (" / i / j"), is the input here
    earlier = tmp_path / "earlier.xyz"
    with pytest.warns(UserWarning):
        run(ConfigSet(varied_file), OutputSpec(earlier), cache=False)
    expected = reference(tmp_path, ConfigSet(earlier), tags={"campaign": "b c"})
    for nproc in (0, 2):
        out = tmp_path / f"frames-{nproc}.xyz"
        with warnings.catch_warnings():
            warnings.simplefilter("error")      # the earlier run left out the failing labels
            run(ConfigSet(earlier), OutputSpec(out, tags={"campaign": "b c"}), nproc=nproc, chunk=2, cache=False)
        assert out.read_bytes() == expected.read_bytes()
    locations = [a.info["_ConfigSet_loc"] for a in ase.io.read(expected, ":")]
    assert " / 1 / 0 / 0" in locations and " / 1 / 1 / 0" in locations


def test_several_input_files_go_to_as_many_output_files(tmp_path):
    inputs = [write_inputs(tmp_path / f"in{k}.xyz", varied_structures(9, offset=100 * k)) for k in range(3)]
    (tmp_path / "ref").mkdir()
    names = [f"out{k}.xyz" for k in range(3)]
    with pytest.warns(UserWarning):
        run(ConfigSet(inputs), OutputSpec(names, file_root=tmp_path / "ref"), workers_read_files=False)
    for nproc, chunk in [(0, 4), (2, "auto")]:
        directory = tmp_path / f"run-{nproc}"
        with pytest.warns(UserWarning):
            result = run(ConfigSet(inputs), OutputSpec(names, file_root=directory), nproc=nproc, chunk=chunk,
                         cache=False)
        for name in names:
            assert (directory / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
        assert len(list(result)) == sum(len(ase.io.read(directory / name, ":")) for name in names)


@pytest.mark.parametrize("index", ["::2", "1:7", -1, "3"])
def test_an_index_selects_the_frames_as_ase_does(tmp_path, varied_file, index):
    inputs = ConfigSet(varied_file, read_kwargs={"index": index})
    # as ase.io.iread takes it: a single frame number stands for a one-frame slice
    single = not (isinstance(index, str) and ":" in index)
    wanted = ase.io.read(varied_file, slice(int(index), int(index) + 1 or None) if single else index)
    items = list(frame_items(inputs.frame_files()))
    assert len(items) == len(wanted)
    assert [item.location for item in items] == [(k,) for k in range(len(wanted))]
    expected = tmp_path / "reference.xyz"
    # an op without failures, so that each selection has outputs
    autoparallelize(_label_op, inputs, OutputSpec(expected), autopara_info={"workers_read_files": False})
    out = tmp_path / "frames.xyz"
    autoparallelize(_label_op, inputs, OutputSpec(out), autopara_info={"num_python_subprocesses": 2,
                                                                       "cache": False})
    assert out.read_bytes() == expected.read_bytes()
    assert [a.info["label"] for a in ase.io.read(out, ":")] == [a.info["label"] for a in wanted]


def _label_op(items):
    for atoms in items:
        atoms.info["seen_at"] = atoms.info["_ConfigSet_loc"]
    return items


def test_outputs_in_memory_and_no_outputs(tmp_path, varied_file):
    with pytest.warns(UserWarning):
        expected = list(run(ConfigSet(varied_file), OutputSpec(), workers_read_files=False))
    for nproc in (0, 2):
        with pytest.warns(UserWarning):
            got = list(run(ConfigSet(varied_file), OutputSpec(), nproc=nproc, chunk=3))
        same_structures(got, expected)
        assert [a.info["_ConfigSet_loc"] for a in got] == [a.info["_ConfigSet_loc"] for a in expected]
        with pytest.warns(UserWarning):
            assert run(ConfigSet(varied_file), None, nproc=nproc, chunk=3) is None


def test_a_process_pool_executor_writes_the_same_bytes(tmp_path, varied_file):
    expected = reference(tmp_path, ConfigSet(varied_file))
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as executor:
        for cache in (False, None):
            out = tmp_path / f"executor-{cache}.xyz"
            with pytest.warns(UserWarning):
                run(ConfigSet(varied_file), OutputSpec(out), chunk=4, executor=executor, cache=cache)
            assert out.read_bytes() == expected.read_bytes()


# --- what the worker cannot store, or cannot read ------------------------------------------------

def unwritable_op(items):
    for atoms in items:
        if atoms.info["label"] == 2:
            atoms.info["bad"] = "two\nlines"
        if atoms.info["label"] == 4:
            return [atoms if a.info["label"] != 4 else "not a structure" for a in items]
    return items


@pytest.mark.parametrize("nproc", [0, 2])
def test_unstorable_outputs_fail_their_items_as_when_the_driver_renders(tmp_path, varied_file, nproc):
    reasons = {}
    for read in (False, True):
        out = tmp_path / f"read-{read}" / "out.xyz"
        with pytest.warns(UserWarning):
            result = autoparallelize(unwritable_op, ConfigSet(varied_file), OutputSpec(out), autopara_info={
                "num_python_subprocesses": nproc, "errors": "skip", "cache": False, "workers_read_files": read})
        reasons[read] = [(f.index, f.reason) for f in result.failures]
    assert reasons[True] == [(index, reason.replace("read-False", "read-True")) for index, reason in reasons[False]]
    assert [index for index, _ in reasons[True]] == [2, 4]
    assert "OutputFormatError" in reasons[True][0][1] and "line break" in reasons[True][0][1]
    assert "OpOutputError" in reasons[True][1][1] and "str" in reasons[True][1][1]
    assert (tmp_path / "read-True" / "out.xyz").read_bytes() == (tmp_path / "read-False" / "out.xyz").read_bytes()


def test_none_without_skip_failed_fails_the_item(tmp_path, varied_file):
    with pytest.raises(AutoparallelizeError, match="returned None and skip_failed is False"):
        autoparallelize(lambda items: [None] * len(items), ConfigSet(varied_file), OutputSpec(tmp_path / "o.xyz"),
                        autopara_info={"skip_failed": False, "cache": False, "num_python_subprocesses": 2})


def counting_op(items, markers):
    for atoms in items:
        (Path(markers) / f"{atoms.info['label']}-{uuid.uuid4().hex}").touch()
    return items


def computed_labels(markers):
    return sorted(int(name.split("-")[0]) for name in os.listdir(markers))


def damaged_copy(path, frame, tmp_path):
    """``path`` with a coordinate of ``frame`` that does not parse (the frames' headers are whole)."""
    text = path.read_text().splitlines(keepends=True)
    line = 0
    for _ in range(frame):
        line += int(text[line]) + 2
    fields = text[line + 2].split()
    fields[2] = "zz"
    text[line + 2] = " ".join(fields) + "\n"
    damaged = tmp_path / "damaged.xyz"
    damaged.write_text("".join(text))
    return damaged, line + 1


@pytest.mark.parametrize("nproc, chunk", [(0, 1), (2, 3)])
def test_a_frame_a_worker_cannot_parse_stops_the_call_naming_it_after_journaling_the_rest(tmp_path, nproc, chunk):
    frames = varied_structures(12)
    good = write_inputs(tmp_path / "good.xyz", frames)
    damaged, line = damaged_copy(good, 5, tmp_path)
    markers = tmp_path / "markers"
    markers.mkdir()
    out = tmp_path / "out.xyz"
    info = {"num_python_subprocesses": nproc, "num_inputs_per_python_subprocess": chunk, "errors": "skip"}
    with pytest.raises(InputFileError, match=rf"damaged.xyz.*frame 5 \(line {line}\)"):
        autoparallelize(counting_op, ConfigSet(damaged), OutputSpec(out), str(markers), autopara_info=info)
    assert not out.exists()
    assert set(range(5)) <= set(computed_labels(markers)) and 5 not in computed_labels(markers)
    # once the frame is fixed, what was journaled before the error is not computed again
    damaged.write_bytes(good.read_bytes())
    for name in os.listdir(markers):
        os.remove(markers / name)
    result = autoparallelize(counting_op, ConfigSet(damaged), OutputSpec(out), str(markers), autopara_info=info)
    assert [a.info["label"] for a in result] == list(range(12))
    assert computed_labels(markers) == list(range(5, 12))


def test_a_header_that_is_not_a_count_is_found_before_any_work(tmp_path):
    path = write_inputs(tmp_path / "in.xyz", varied_structures(8))
    lines = path.read_text().splitlines(keepends=True)
    line = int(lines[0]) + 2        # frame 1's count line
    lines[line] = "three\n"
    path.write_text("".join(lines))
    markers = tmp_path / "markers"
    markers.mkdir()
    with pytest.raises(InputFileError, match=rf"in.xyz.*frame 1 \(line {line + 1}\).*number of atoms"):
        autoparallelize(counting_op, ConfigSet(path), OutputSpec(tmp_path / "out.xyz"), str(markers),
                        autopara_info={"num_python_subprocesses": 2})
    assert os.listdir(markers) == []


# --- the driver does not parse ---------------------------------------------------------------------

class CallCounter:
    """Counts calls of some functions in this process, all threads, by their code objects (no patching)."""

    def __init__(self, *functions):
        self.codes = {f.__code__ for f in functions}
        self.calls = 0

    def __call__(self, frame, event, arg):
        if event == "call" and frame.f_code in self.codes:
            self.calls += 1

    def __enter__(self):
        sys.setprofile(self)
        threading.setprofile(self)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)
        threading.setprofile(None)


PARSERS = (ase.io.extxyz._read_xyz_frame, Atoms.__init__)


@pytest.mark.parametrize("outputs", ["file", "memory"])
def test_the_driver_parses_no_frame_and_builds_no_structure(tmp_path, varied_file, outputs):
    def spec(name):
        return OutputSpec(tmp_path / name) if outputs == "file" else OutputSpec()

    with CallCounter(*PARSERS) as driver_parsing:
        _label_run(varied_file, spec("objects.xyz"), workers_read_files=False)
    assert driver_parsing.calls >= N       # the counter sees parsing where there is some
    with CallCounter(*PARSERS[:1] if outputs == "memory" else PARSERS) as frames_path:
        result = _label_run(varied_file, spec("frames.xyz"), workers_read_files=True)
    # outputs in memory come back as structures (unpickled, not built): none is parsed
    assert frames_path.calls == 0
    assert len(list(result)) == N
    if outputs == "file":
        assert (tmp_path / "frames.xyz").read_bytes() == (tmp_path / "objects.xyz").read_bytes()


def _label_run(path, outputs, workers_read_files):
    return autoparallelize(_label_op, ConfigSet(path), outputs, autopara_info={
        "num_python_subprocesses": 2, "num_inputs_per_python_subprocess": 5, "cache": False,
        "workers_read_files": workers_read_files})


def test_the_env_var_turns_the_frames_path_off(tmp_path, varied_file, monkeypatch):
    monkeypatch.setenv("WFL_LIKE_WORKERS_READ_FILES", "0")
    with CallCounter(*PARSERS[:1]) as counter:
        _label_run(varied_file, OutputSpec(tmp_path / "a.xyz"), workers_read_files=None)
    assert counter.calls >= N
    monkeypatch.setenv("WFL_LIKE_WORKERS_READ_FILES", "maybe")
    with pytest.raises(ValueError, match="WFL_LIKE_WORKERS_READ_FILES='maybe'"):
        _label_run(varied_file, OutputSpec(tmp_path / "b.xyz"), workers_read_files=None)


def test_workers_read_files_must_be_a_bool(varied_file):
    with pytest.raises(TypeError, match="workers_read_files must be True, False or None"):
        autoparallelize(_label_op, ConfigSet(varied_file), None, autopara_info={"workers_read_files": "yes"})


def test_frames_are_indexed_with_locations_and_digests_of_their_bytes(tmp_path, varied_file):
    earlier = tmp_path / "earlier.xyz"
    with pytest.warns(UserWarning):
        run(ConfigSet(varied_file), OutputSpec(earlier), cache=False)
    raw = earlier.read_bytes()
    items = list(frame_items(ConfigSet([varied_file, earlier]).frame_files(), hashed=True))
    read = [(loc, atoms) for loc, atoms in ConfigSet([varied_file, earlier]).located()]
    assert [item.location for item in items] == [loc for loc, _ in read]
    second = [item for item in items if item.location[0] == 1]
    assert b"".join(raw[item.start:item.end] for item in second) == raw
    assert all(isinstance(item, FrameItem) and len(item.digest) == 32 for item in items)
    assert len({item.digest for item in items}) == len(items)


def test_stored_locations_are_read_as_ase_reads_them_whatever_else_the_line_holds(tmp_path):
    frames = varied_structures(6)
    tricky = ['say "hi" _ConfigSet_loc=" / 9"', "back\\slash", "_ConfigSet_loc", 'x="y"', "", "plain"]
    for i, (atoms, text) in enumerate(zip(frames, tricky)):
        atoms.info["note"] = text
        atoms.info["_ConfigSet_loc"] = f" / {i % 2} / {i}"
    # written by ASE itself, unchecked: whatever it writes, the index reads what its reader reads
    ase.io.write(tmp_path / "nested.xyz", frames, format="extxyz")
    expected = [loc for loc, _ in ConfigSet(tmp_path / "nested.xyz").located()]
    # after an empty value ASE's parser takes the location as that value: frame 4 has none
    assert expected == [(0, 0), (1, 1), (0, 2), (1, 3), (4,), (1, 5)]
    assert [item.location for item in frame_items(ConfigSet(tmp_path / "nested.xyz").frame_files())] == expected


def test_other_inputs_keep_the_driver_parsing_path(tmp_path, varied_file):
    # another format, other read arguments, and structures in memory are read by the driver
    assert ConfigSet(varied_file, read_kwargs={"format": "xyz"}).frame_files() is None
    assert ConfigSet(varied_file, read_kwargs={"properties_parser": None}).frame_files() is None
    assert ConfigSet(varied_structures(2)).frame_files() is None
    ase.io.write(tmp_path / "in.traj", varied_structures(2)[1:])
    assert ConfigSet(tmp_path / "in.traj").frame_files() is None


# --- MPI ---------------------------------------------------------------------------------------------

MPI_DRIVER = textwrap.dedent("""
    import sys
    from wfl_like.autoparallelize import mpipool_support
    mpipool_support.init()

    import warnings
    from wfl_like import ConfigSet, OutputSpec
    from test_frames_path import run

    warnings.simplefilter("ignore")
    source, several = sys.argv[1], sys.argv[2:]
    run(ConfigSet(source), OutputSpec("mpi-text.xyz"), chunk=3, cache=False)
    run(ConfigSet(source), OutputSpec("mpi-journal.xyz"), chunk="auto")
    run(ConfigSet(several), OutputSpec(["mpi-0.xyz", "mpi-1.xyz"]), chunk=2, cache=False)
""")


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (install the mpi extra)")
@pytest.mark.timeout(600)
def test_mpi_ranks_write_the_same_bytes(tmp_path, varied_file):
    pytest.importorskip("mpipool")
    several = [write_inputs(tmp_path / f"in{k}.xyz", varied_structures(7, offset=50 * k)) for k in range(2)]
    expected = reference(tmp_path, ConfigSet(varied_file))
    (tmp_path / "ref").mkdir()
    with pytest.warns(UserWarning):
        run(ConfigSet(several), OutputSpec(["0.xyz", "1.xyz"], file_root=tmp_path / "ref"), workers_read_files=False)
    (tmp_path / "driver.py").write_text(MPI_DRIVER)
    env = {k: v for k, v in os.environ.items() if k not in ("WFL_NUM_PYTHON_SUBPROCESSES",)}
    env.update(WFL_MPIPOOL="1", PATH=BIN + os.pathsep + env.get("PATH", ""),
               PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")])))
    proc = subprocess.run([MPIEXEC, "-n", "3", sys.executable, "driver.py", str(varied_file), *map(str, several)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "mpi-text.xyz").read_bytes() == expected.read_bytes()
    assert (tmp_path / "mpi-journal.xyz").read_bytes() == expected.read_bytes()
    for k in range(2):
        assert (tmp_path / f"mpi-{k}.xyz").read_bytes() == (tmp_path / "ref" / f"{k}.xyz").read_bytes()


# --- a frame that moved is reused, its journaled text moved to its new place ------------------------

def marking_op(items, markers, copy_location=False):
    """Marks each item computed; a list of two structures for odd labels (sub-locations)."""
    outputs = []
    for atoms in items:
        Path(markers, f"{atoms.info['label']}-{uuid.uuid4().hex}").touch()
        atoms.info["value"] = float(atoms.positions.sum())
        if copy_location:
            atoms.info["seen_at"] = atoms.info["_ConfigSet_loc"]
        if atoms.info["label"] % 2:
            other = atoms.copy()
            other.positions += 0.5
            outputs.append([atoms, other])
        else:
            outputs.append(atoms)
    return outputs


def marking_run(inputs, names, directory, markers, copy_location=False, nproc=2, cache=None):
    spec = OutputSpec(names, file_root=directory) if isinstance(names, list) else OutputSpec(directory / names)
    markers.mkdir(exist_ok=True)
    autoparallelize(marking_op, ConfigSet(inputs), spec, str(markers), copy_location,
                    autopara_info={"num_python_subprocesses": nproc, "num_inputs_per_python_subprocess": 3,
                                   "cache": cache})


def test_frames_inserted_before_others_and_files_swapped_compute_only_the_new_ones_byte_for_byte(tmp_path):
    frames = [varied_structures(5, offset=100 * k) for k in range(3)]
    paths = [write_inputs(tmp_path / f"in{k}.xyz", frames[k]) for k in range(3)]
    names = [f"out{k}.xyz" for k in range(3)]
    markers = tmp_path / "markers"
    marking_run(paths, names, tmp_path / "run", markers)
    assert len(computed_labels(markers)) == 15

    # a frame inserted at the start of two files, and the first two files swapped: every other frame
    # is at another location, and the outputs of the first two files go to each other's file
    write_inputs(paths[0], varied_structures(1, offset=900) + frames[0])
    write_inputs(paths[2], varied_structures(1, offset=950) + frames[2])
    swapped = [paths[1], paths[0], paths[2]]
    marking_run(swapped, names, tmp_path / "run", markers)
    assert computed_labels(markers)[15:] == [900, 950]
    marking_run(swapped, names, tmp_path / "fresh", tmp_path / "fresh-markers", cache=False)
    for name in names:
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()


@pytest.mark.parametrize("nproc", [0, 2])
def test_an_op_that_copies_its_location_is_computed_again_where_its_frame_moved(tmp_path, nproc):
    # its text holds the old location elsewhere than in _ConfigSet_loc: not moved (no guess), computed
    frames = varied_structures(4)
    path = write_inputs(tmp_path / "in.xyz", frames)
    markers = tmp_path / "markers"
    marking_run(path, "out.xyz", tmp_path, markers, copy_location=True, nproc=nproc)
    write_inputs(path, varied_structures(1, offset=900) + frames)
    marking_run(path, "out.xyz", tmp_path, markers, copy_location=True, nproc=nproc)
    assert computed_labels(markers) == sorted([0, 1, 2, 3] * 2 + [900])
    marking_run(path, "fresh.xyz", tmp_path, tmp_path / "fresh-markers", copy_location=True, cache=False)
    assert (tmp_path / "out.xyz").read_bytes() == (tmp_path / "fresh.xyz").read_bytes()


# --- the workers compress the journal's texts ---------------------------------------------------------

def test_a_worker_keeping_a_journal_packs_its_texts_and_the_driver_takes_only_a_matching_form(tmp_path):
    path = write_inputs(tmp_path / "in.xyz", varied_structures(3) + [Atoms("Cu32", positions=np.zeros((32, 3)))])
    items = list(frame_items(ConfigSet(path).frame_files(), hashed=True))
    renderer = OutputSpec(tmp_path / "out.xyz").renderer()
    call = OpCall(op=_label_op, args=(), kwargs={})
    plain = FramesCall(call, renderer).run(0, items, [None] * len(items))
    packed = FramesCall(call, renderer, journaled=True).run(0, items, [None] * len(items))
    assert all(type(output) is RenderedOutput for output in plain)
    assert all(type(output) is stored.PackedOutput for output in packed)
    assert [output.rendered for output in packed] == plain
    assert [output.packed for output in packed] == [stored.pack(output) for output in plain]
    assert {output.packed.form for output in packed} == {stored.TEXT, stored.ZLIB}
    assert stored.unwrapped(packed[0]) == (plain[0], packed[0].packed)
    # a form that is not the text's own is not taken: the driver packs the text itself
    wrong = stored.PackedOutput(plain[0], packed[0].packed._replace(count=5))
    assert stored.unwrapped(wrong) == (plain[0], None)
    assert stored.unwrapped(plain[0]) == (plain[0], None)


def test_texts_packed_by_the_workers_read_back_as_the_run_wrote_them(tmp_path):
    path = write_inputs(tmp_path / "in.xyz", varied_structures(12))
    markers = tmp_path / "markers"
    marking_run(path, "out.xyz", tmp_path, markers)
    written = (tmp_path / "out.xyz").read_bytes()
    with Journal(journal_path(tmp_path / "out.xyz"), read_only=True) as journal:
        assert journal.counts() == {"done": 12, "failed": 0}
    (tmp_path / "out.xyz").unlink()     # rebuilt from the journal alone
    marking_run(path, "out.xyz", tmp_path, markers)
    assert len(computed_labels(markers)) == 12
    assert (tmp_path / "out.xyz").read_bytes() == written
