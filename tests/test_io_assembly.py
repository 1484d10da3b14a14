"""Frames built directly (wfl_like.io.assembly, wfl_like.structures) are what ASE's steps build.

The reader builds the first frame of each layout with ASE's constructors and every later
one directly, once the two were seen to agree.  Here every case of the reader's tests is
written several times over, so that most of its frames take the direct way, and each frame
is compared, in every respect ``same_objects`` sees (types, order, dtypes, memory layout,
sharing), with the frame built alone by ASE's steps.
"""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.singlepoint import SinglePointCalculator

import ase.io
from wfl_like.io import assembly
from wfl_like.io.fastread import READER_ENV, parse_frames
from wfl_like.io.frames import index_frames
from wfl_like.structures import atoms_from_parts, copy_as_ase, is_plain_atoms, same_objects

from test_io_fastread import HAVE_C, TEXT_CASES, WRITTEN_CASES, _write_case, assert_same_frames

pytestmark = pytest.mark.skipif(not HAVE_C, reason="extxyz (libextxyz) not installed: frames are all built by ASE")

REPEATS = 3


def _repeated(tmp_path, name):
    """The case's file written REPEATS times over, and the bytes of each of its frames."""
    one = _write_case(tmp_path, name).read_bytes()
    if not one.endswith(b"\n"):
        one += b"\n"
    path = tmp_path / f"{name}_x{REPEATS}.xyz"
    path.write_bytes(one * REPEATS)
    index = index_frames(path)
    data = path.read_bytes()
    bounds = index.offsets.tolist()
    return data, [data[start:end] for start, end in zip(bounds, bounds[1:])]


def _built_by_ase_steps(frame):
    assembly.forget_layouts()       # the frame is the first of its layout: built both ways, ASE's result returned
    return parse_frames(frame)[0]


def _mutable_ids(atoms):
    """The ids of the arrays, dicts and lists reachable from a frame."""
    found, stack = set(), [atoms]
    while stack:
        value = stack.pop()
        if isinstance(value, (np.ndarray, dict, list)) or hasattr(value, "__dict__"):
            if id(value) in found or isinstance(value, type):
                continue
            found.add(id(value))
            if isinstance(value, dict):
                stack.extend(value.values())
            elif isinstance(value, list):
                stack.extend(value)
            elif hasattr(value, "__dict__") and not isinstance(value, np.ndarray):
                stack.extend(v for v in vars(value).values() if not callable(v))
    return found


# (a file ending in blank lines cannot be repeated: blank lines between frames are refused)
@pytest.mark.parametrize("name", sorted(WRITTEN_CASES) + sorted(set(TEXT_CASES) - {"trailing_blank_lines"}))
def test_frames_built_directly_are_those_of_ase_steps(tmp_path, monkeypatch, name):
    monkeypatch.setenv(READER_ENV, "auto")
    data, frames = _repeated(tmp_path, name)
    assembly.forget_layouts()
    got = parse_frames(data)
    assert len(got) == len(frames)
    want = [_built_by_ase_steps(frame) for frame in frames]
    for i, (g, w) in enumerate(zip(got, want)):
        assert same_objects(g, w), f"{name}: frame {i} differs from what ASE's steps build"
    # and what ase.io.read gives (values, types, order: memory layout aside)
    assert_same_frames(got, ase.io.read(tmp_path / f"{name}_x{REPEATS}.xyz", ":", format="extxyz", parallel=False))
    # no two frames share a mutable object
    seen = set()
    for atoms in got:
        ids = _mutable_ids(atoms)
        assert not ids & seen
        seen |= ids


def test_common_layouts_are_built_directly(tmp_path):
    data, _ = _repeated(tmp_path, "cu_with_results")
    assembly.forget_layouts()
    parse_frames(data)
    assert any(layout is not None for layout in assembly._LAYOUTS.values())


@pytest.mark.parametrize("name", ["move_mask_1", "move_mask_3"])
def test_layouts_outside_the_direct_way_keep_ase_steps(tmp_path, name):
    data, frames = _repeated(tmp_path, name)
    assembly.forget_layouts()
    got = parse_frames(data)
    assert all(layout is None for layout in assembly._LAYOUTS.values())
    assert all(same_objects(g, _built_by_ase_steps(f)) for g, f in zip(got, frames))


def _stored_results_file(tmp_path, n=4):
    images = []
    for i in range(n):
        atoms = bulk("Cu", cubic=True) * (2, 1, 1)
        atoms.rattle(0.05, seed=i)
        atoms.calc = SinglePointCalculator(atoms, energy=-1.0 - i, forces=np.full((len(atoms), 3), 0.1 * i))
        images.append(atoms)
    path = tmp_path / "results.xyz"
    ase.io.write(path, images, format="extxyz")
    return path


def test_directly_built_calculator_works_as_ase_s(tmp_path):
    assembly.forget_layouts()
    frames = parse_frames(_stored_results_file(tmp_path).read_bytes())
    last = frames[-1]
    assert last.get_potential_energy() == pytest.approx(-4.0)
    assert np.allclose(last.get_forces(), 0.3)
    # the calculator holds its own copy of the structure: a moved atom invalidates its results
    last.positions[0] += 0.1
    with pytest.raises(PropertyNotImplementedError):
        last.get_potential_energy()
    # and the others are untouched
    assert frames[-2].get_potential_energy() == pytest.approx(-3.0)
    assert last.calc.get_spin_polarized.__self__ is last.calc


# --- same_objects ---------------------------------------------------------------------------


def _small():
    atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7]], cell=[2, 2, 2], pbc=True)
    atoms.info["label"] = "x"
    return atoms


def test_same_objects_on_equal_copies():
    assert same_objects(_small(), _small())
    assert same_objects({"a": [1, np.nan], "b": np.array([np.nan])}, {"a": [1, np.nan], "b": np.array([np.nan])})


@pytest.mark.parametrize("change", ["value", "dtype", "order", "key_order", "layout", "type", "unknown"])
def test_same_objects_sees_every_difference(change):
    a, b = _small(), _small()
    if change == "value":
        b.positions[1, 2] = 0.71
    elif change == "dtype":
        b.arrays["numbers"] = b.arrays["numbers"].astype(np.int32)
    elif change == "order":
        b.arrays = dict(reversed(list(b.arrays.items())))
    elif change == "key_order":
        a.info["other"], b.info = 1, {"other": 1, "label": "x"}
    elif change == "layout":
        b.arrays["positions"] = np.asfortranarray(b.arrays["positions"])
    elif change == "type":
        b.info["label"] = np.str_("x")
    else:
        a.info["label"] = b.info["label"] = object()
    assert not same_objects(a, b)


def test_same_objects_sees_sharing():
    a, b = _small(), _small()
    shared = np.zeros(3)
    a.info["one"], a.info["two"] = shared, shared
    b.info["one"], b.info["two"] = np.zeros(3), np.zeros(3)
    assert not same_objects(a, b)
    b.info["two"] = b.info["one"]
    assert same_objects(a, b)
    assert not same_objects(a, a)       # one object in both graphs


def test_parts_builders_make_plain_atoms_equal_to_ase_s():
    atoms = _small()
    built = atoms_from_parts(atoms.cell.array.copy(), atoms.pbc.copy(),
                             {name: value.copy() for name, value in atoms.arrays.items()}, dict(atoms.info))
    assert is_plain_atoms(built)
    assert same_objects(built, _small())
    assert same_objects(copy_as_ase(atoms), atoms.copy())
