"""The fast extended XYZ writer gives ASE's text byte for byte, or declines; render() keeps its checks.

Every structure here is written by ASE (``ase.io.write(..., format="extxyz")``) and by
``extxyz_text``: the texts must be equal, or the fast writer must decline the cases listed
as declined (so that what it covers cannot shrink unnoticed).  Texts are also read back
with ``ase.io.read`` and compared with the structure written.
"""

import io
import json
import pickle
import subprocess
import sys
import warnings

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms, FixBondLength, FixCartesian
from ase.spacegroup import Spacegroup

from wfl_like.io.fastwrite import extxyz_text, uncovered_reason
from wfl_like.io.render import WRITER_ENV, UnwritableOutput, render

EXTXYZ = {"format": "extxyz"}


def ase_text(atoms, **write_kwargs):
    buffer = io.StringIO()
    ase.io.write(buffer, atoms, format="extxyz", parallel=False, **write_kwargs)
    return buffer.getvalue()


def read_text(text):
    return ase.io.read(io.StringIO(text), format="extxyz", parallel=False)


def cu(n_repeat=1, seed=0):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (n_repeat, n_repeat, n_repeat)
    atoms.positions += np.random.default_rng(seed).normal(scale=0.05, size=atoms.positions.shape)
    return atoms


def with_info(**info):
    atoms = cu()
    atoms.info.update(info)
    return atoms


def with_arrays(**arrays):
    atoms = cu()
    for key, values in arrays.items():
        atoms.new_array(key, np.asarray(values)) if not isinstance(values, np.ndarray) else \
            atoms.arrays.__setitem__(key, values)
    return atoms


def with_results(atoms=None, **results):
    atoms = cu() if atoms is None else atoms
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def constrained(*constraints):
    atoms = cu()
    atoms.set_constraint(list(constraints))
    return atoms


def emt_evaluated():
    atoms = cu(2)
    atoms.calc = EMT()
    atoms.get_potential_energy()
    atoms.get_stress()
    return atoms


def huge_coordinates():
    atoms = cu()
    atoms.positions[0] = [1e12, -3.5e15, 123456789.123456789]
    atoms.positions[1] = [1e-12, -1e-9, 5e-9]
    return atoms


def negative_zeros():
    atoms = Atoms("H2", positions=[[-0.0, 0.0, -0.0], [-1e-10, 0.0, 0.5]], cell=[[-0.0, 0, 0], [0, 2, 0], [0, 0, 0]])
    atoms.info["minus_zero"] = -0.0
    return atoms


def ties_at_the_eighth_decimal():
    # j / 512 with j odd: halfway between two 8-decimal numbers, rounded to even by both writers
    atoms = Atoms("H4", positions=np.arange(1, 24, 2).reshape(4, 3) / 512 - 0.01)
    return atoms


FORCES = np.random.default_rng(1).normal(size=(4, 3))

# name -> structure the fast writer must write exactly as ASE does
COVERED = {
    "cu cell with energy forces stress": lambda: with_results(energy=-3.5, forces=FORCES, stress=np.arange(6.0)),
    # (a symmetric one: ASE reads a stress back as its 6 Voigt components)
    "stress as 3x3": lambda: with_results(energy=1, stress=np.array([[1.0, 2, 3], [2, 4, 5], [3, 5, 6]])),
    "free energy magmoms charges energies": lambda: with_results(
        energy=-1.0, free_energy=-1.25, magmoms=[0.5, -0.5, 0, 1], charges=[0.1, -0.1, 0, 0], energies=[1, 2, 3, 4]),
    "per-atom stresses dipole magmom": lambda: with_results(
        stresses=np.arange(24.0).reshape(4, 6), dipole=[0.1, 0.2, 0.3], magmom=1.5),
    "non-collinear magmoms": lambda: with_results(magmoms=np.arange(12.0).reshape(4, 3)),
    "EMT results": emt_evaluated,
    "info ints": lambda: with_info(a=1, b=-7, c=np.int64(12), d=np.int32(-3), e=10**20),
    "info floats": lambda: with_info(a=1.5, b=np.float64(0.1), c=np.float32(0.1), d=1e-300, e=1.7976931348623157e308,
                                     f=5e-324, g=-0.0, h=123456789012345678.0, i=np.float16(0.1)),
    "info nan and inf": lambda: with_info(a=float("nan"), b=float("inf"), c=-float("inf"), d=np.nan),
    "info bools": lambda: with_info(a=True, b=False, c=np.bool_(True), d=np.bool_(False)),
    "info safe strings": lambda: with_info(a="abc", b="x_1.5+2/3@y", c="T", d="1.5"),
    "info strings needing quotes": lambda: with_info(
        a="two words", b='a "quoted" word', c="it's", d="{braces}", e="[brackets]", f="a=b"),
    "info string with a tab": lambda: with_info(g="tab\there"),
    "info unicode strings": lambda: with_info(a="Cu₃Au", b="é ü ß", c="中文 字符", d="naïve"),
    "info None": lambda: with_info(flag=None, after=1),
    "info keys needing quotes": lambda: with_info(**{"my key": 1, "é": "x", "a=b": 2.5}),
    "info int float bool vectors": lambda: with_info(
        a=np.arange(3), b=np.array([0.1, -2.5e-10, np.nan, np.inf]), c=np.array([True, False, True]),
        d=np.array([1.5, 0.1, -3e-9], dtype=np.float32), f=np.array([0.1, 1e-300], dtype=np.longdouble),
        g=np.array([1, -2], dtype=np.int8)),
    "info matrices": lambda: with_info(
        a=np.arange(9.0).reshape(3, 3), b=np.eye(3, dtype=int), c=np.ones((2, 2), bool),
        virial=np.arange(9.0).reshape(3, 3), stress=np.arange(6.0), d=np.arange(4, dtype=np.uint8),
        e=np.array(["a", "b c"])),
    "info empty vector": lambda: with_info(e=np.array([], dtype=float), after=1),
    "info 0-d arrays": lambda: with_info(a=np.array(1.5), b=np.array(3), c=np.array(True)),
    "info lists tuples dicts": lambda: with_info(
        a=["x", "y z"], b=[1, 2.5, None], c=(1, 2), d={"k": [1, "v"]}, e=[], f=["é"], g=[np.float64(0.5)]),
    "info pbc replaced": lambda: with_info(pbc="ignored", after=1),
    "ConfigSet locations": lambda: with_info(_ConfigSet_loc=" / 0 / 12 / 3"),
    "location at the top": lambda: with_info(_ConfigSet_loc=" / 7"),
    "FixAtoms": lambda: constrained(FixAtoms([0, 2])),
    "FixAtoms by mask": lambda: constrained(FixAtoms(mask=[True, False, False, True])),
    "FixCartesian": lambda: constrained(FixCartesian(1, [True, False, True])),
    "FixAtoms and FixCartesian": lambda: constrained(FixAtoms([3]), FixCartesian([0, 1], [False, True, False])),
    "FixAtoms fixing nothing": lambda: constrained(FixAtoms([])),
    "other constraints only": lambda: constrained(FixBondLength(0, 1)),
    "non-orthogonal cell": lambda: Atoms("Si2", positions=[[0, 0, 0], [1.3, 1.3, 1.3]],
                                         cell=[[0, 2.7, 2.7], [2.7, 0, 2.7], [2.7, 2.7, 0.1]], pbc=True),
    "pbc mix": lambda: Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], cell=[5, 6, 7], pbc=[True, False, True]),
    "cell without pbc": lambda: Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], cell=[5, 5, 5], pbc=False),
    "molecule without cell": lambda: molecule("CH3CH2OH"),
    "pbc without cell": lambda: Atoms("H", pbc=True),
    "cell with one vector": lambda: Atoms("H", cell=[[1.5, 0, 0], [0, 0, 0], [0, 0, 0]], pbc=[True, False, False]),
    "one atom": lambda: with_results(Atoms("Ar", positions=[[0.1, 0.2, 0.3]]), energy=0.0, forces=[[1e-3, 0, 0]]),
    "no atoms": lambda: Atoms(),
    "no atoms with cell and info": lambda: Atoms(cell=[2, 2, 2], pbc=True, info={"a": 1}),
    "per-atom int bool str arrays": lambda: with_arrays(
        tag_i=np.arange(4) * 1000 - 1500, flag=np.array([True, False, True, True]),
        label=np.array(["a", "bb", "ccc", "d"])),
    "per-atom unicode strings": lambda: with_arrays(label=np.array(["é", "ü", "中", "x"])),
    "per-atom (n,1) and wide arrays": lambda: with_arrays(
        one=np.arange(4.0).reshape(4, 1), two=np.arange(8.0).reshape(4, 2), five=np.arange(20).reshape(4, 5)),
    "per-atom float32": lambda: with_arrays(f32=np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)),
    "per-atom charges renamed": lambda: with_arrays(charges=np.array([0.5, -0.5, 0.0, 0.0])),
    "per-atom int32 and bool wide": lambda: with_arrays(i32=np.arange(4, dtype=np.int32),
                                                        b3=np.ones((4, 3), dtype=bool)),
    "velocities and masses": lambda: _with_velocities_and_masses(),
    "tags and initial magmoms": lambda: _with_tags_and_magmoms(),
    "negative zeros": negative_zeros,
    "huge and tiny coordinates": huge_coordinates,
    "ties at the eighth decimal": ties_at_the_eighth_decimal,
    "more atoms than whole-frame formats are kept for": lambda: with_results(
        cu(11), energy=1.0, forces=np.random.default_rng(2).normal(size=(5324, 3))),
    "dummy and heavy elements": lambda: Atoms([0, 1, 118, 92], positions=np.arange(12.0).reshape(4, 3)),
    "info and results together": lambda: with_results(
        with_info(_ConfigSet_loc=" / 3", config_type="bulk", temperature=300.0), energy=-2.0, forces=FORCES),
}


def _with_velocities_and_masses():
    atoms = cu()
    atoms.set_velocities(np.arange(12.0).reshape(4, 3) / 7)
    atoms.set_masses([63.5, 1.0, 2.0, 3.0])
    return atoms


def _with_tags_and_magmoms():
    atoms = cu()
    atoms.set_tags([0, 1, 2, 3])
    atoms.set_initial_magnetic_moments([1.0, -1.0, 0.0, 0.5])
    return atoms


class _Opaque:
    pass


# name -> (structure the fast writer must decline, what its reason says)
DECLINED = {
    "result also in info": (lambda: with_results(with_info(energy=1.0), energy=2.0), "also in info"),
    "info object": (lambda: with_info(thing=_Opaque()), "_Opaque"),
    "info complex": (lambda: with_info(z=1 + 2j), "complex"),
    "info complex array": (lambda: with_info(z=np.ones(3, complex)), "complex"),
    "info list of numpy ints": (lambda: with_info(l=[np.int64(1)]), "JSON"),
    "info bytes": (lambda: with_info(b=b"raw"), "bytes"),
    "info spacegroup": (lambda: with_info(spacegroup=Spacegroup(225)), "Spacegroup"),
    "info stress not an array": (lambda: with_info(stress=[1, 2, 3, 4, 5, 6]), "stress"),
    "per-atom complex": (lambda: with_arrays(z=np.ones(4, complex)), "complex"),
    "per-atom unsigned": (lambda: with_arrays(u=np.arange(4, dtype=np.uint16)), "uint16"),
    "per-atom objects": (lambda: with_arrays(o=np.array([1, "a", None, 2.0], dtype=object)), "object"),
    "per-atom bytes": (lambda: with_arrays(s=np.array([b"a", b"b", b"c", b"d"])), "S1"),
    "per-atom 3-d": (lambda: with_arrays(t=np.zeros((4, 3, 3))), "dimensions"),
    "per-atom long double": (lambda: with_arrays(q=np.zeros(4, np.longdouble)), "float128"),
    "per-atom move_mask": (lambda: with_arrays(move_mask=np.ones(4, bool)), "move_mask"),
    "record field clash": (lambda: with_arrays(a=np.zeros((4, 3)), a0=np.zeros(4)), "record field"),
    "not an Atoms": (lambda: "H2O", "str"),
}


@pytest.mark.parametrize("case", list(COVERED))
def test_covered_structures_are_written_byte_for_byte_as_ase_writes_them(case):
    atoms = COVERED[case]()
    before = ase_text(atoms)
    assert uncovered_reason(atoms) is None
    text = extxyz_text(atoms)
    assert text == ase_text(atoms)
    # and the structure is left as it was
    assert ase_text(atoms) == before


# What extended XYZ itself does not give back as written (ASE's text as well, read by ASE):
# case -> keys left out of the comparison of what is read back
LOST_ON_READING = {
    "info safe strings": {"c", "d"},  # "T" and "1.5" read back as a bool and a float
    "info keys needing quotes": {"a=b"},  # read back as key 'a'
    "info matrices": {"stress"},  # read back as a calculator result
    "info lists tuples dicts": {"f"},  # non-ASCII JSON is read back with its escapes broken
    "info string with a tab": {"g"},  # cut at the tab
    "info empty vector": {"e", "after"},  # "e=" takes the next entry as its value
    "per-atom charges renamed": {"charges"},  # read back as a calculator result
}


@pytest.mark.parametrize("case", list(COVERED))
def test_covered_structures_read_back_as_written(case):
    atoms = COVERED[case]()
    assert_reads_back(atoms, read_text(extxyz_text(atoms)), LOST_ON_READING.get(case, set()))


@pytest.mark.parametrize("case", list(DECLINED))
def test_uncovered_structures_are_declined_with_a_reason(case):
    make, reason = DECLINED[case]
    atoms = make()
    assert extxyz_text(atoms) is None
    assert reason in uncovered_reason(atoms)


@pytest.mark.parametrize("case", [c for c in DECLINED if c != "not an Atoms"])
def test_render_of_declined_structures_is_what_ase_gives(case):
    atoms = DECLINED[case][0]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            expected = ase_text(atoms)
        except Exception as exc:
            expected = exc
        if isinstance(expected, Exception):
            with pytest.raises(UnwritableOutput, match="writer refused it"):
                render(atoms, EXTXYZ)
        else:
            try:
                text = render(atoms, EXTXYZ)
            except UnwritableOutput:
                return  # ASE's text would not read back: refused, as before
            assert text == expected


def random_structure(rng):
    """A structure with a random pick of what extended XYZ holds."""
    n_atoms = int(rng.integers(0, 12))
    numbers = rng.integers(1, 90, size=n_atoms)
    scale = 10.0 ** rng.integers(-3, 5)
    atoms = Atoms(numbers=numbers, positions=rng.normal(scale=scale, size=(n_atoms, 3)))
    if rng.random() < 0.7:
        atoms.cell = rng.normal(scale=5, size=(3, 3)) if rng.random() < 0.5 else np.diag(rng.uniform(1, 20, 3))
    atoms.pbc = rng.random(3) < 0.5
    pickers = [
        lambda: float(rng.normal() * 10.0 ** rng.integers(-300, 300)),
        lambda: int(rng.integers(-10**9, 10**9)),
        lambda: bool(rng.random() < 0.5),
        lambda: "".join(rng.choice(list("ab c\"'=é{}[]_.1"), size=int(rng.integers(1, 8)))),
        lambda: rng.normal(size=int(rng.integers(1, 5))),
        lambda: rng.integers(-5, 5, size=3),
        lambda: rng.normal(size=(3, 3)),
        lambda: [str(x) for x in rng.integers(0, 9, size=2)],
        lambda: np.float32(rng.normal()),
    ]
    for index in range(int(rng.integers(0, 5))):
        atoms.info[f"key{index}"] = pickers[int(rng.integers(len(pickers)))]()
    if rng.random() < 0.5:
        atoms.info["_ConfigSet_loc"] = " / " + " / ".join(str(i) for i in rng.integers(0, 50, size=2))
    kinds = [lambda: rng.normal(size=n_atoms), lambda: rng.normal(size=(n_atoms, 3)).astype(np.float32),
             lambda: rng.integers(-100, 100, size=n_atoms), lambda: rng.random(n_atoms) < 0.5,
             lambda: rng.choice(["x", "yy", "zzz"], size=n_atoms)]
    for index in range(int(rng.integers(0, 3))):
        atoms.arrays[f"col{index}"] = kinds[int(rng.integers(len(kinds)))]()
    if n_atoms and rng.random() < 0.3:
        atoms.set_constraint(FixAtoms(indices=rng.choice(n_atoms, size=1)))
    if rng.random() < 0.6:
        results = {"energy": float(rng.normal()), "forces": rng.normal(size=(n_atoms, 3))}
        if rng.random() < 0.5:
            results["stress"] = rng.normal(size=6) if rng.random() < 0.5 else rng.normal(size=(3, 3))
        atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def test_random_structures_are_written_as_ase_writes_them():
    rng = np.random.default_rng(20261202)
    declined = []
    for index in range(400):
        atoms = random_structure(rng)
        text = extxyz_text(atoms)
        if text is None:
            declined.append((index, uncovered_reason(atoms)))
            continue
        assert text == ase_text(atoms), index
    assert declined == []


# --- what the comparison of a structure read back means -------------------------------------------

def assert_reads_back(original, read, lost=frozenset()):
    n_atoms = len(original)
    assert len(read) == n_atoms
    assert read.get_chemical_symbols() == original.get_chemical_symbols()
    close(read.positions, original.positions)
    assert read.pbc.tolist() == original.pbc.tolist()
    if original.cell.any():
        np.testing.assert_array_equal(read.cell.array, original.cell.array)
    expected_info = {k: v for k, v in original.info.items() if k != "pbc" and k not in lost}
    for key, value in expected_info.items():
        assert key in read.info, key
        same_value(read.info[key], value, key)
    results = original.calc.results if original.calc is not None else {}
    read_results = read.calc.results if read.calc is not None else {}
    for key, value in results.items():
        if key in read_results:
            if key == "stress":
                value = full_stress(value)
                close(full_stress(read_results[key]), value, exact=True)
            else:
                close(read_results[key], value, exact=np.ndim(value) == 0)
    for key, value in original.arrays.items():
        if key in ("numbers", "positions") or key in lost:
            continue
        read_value = read.arrays.get(key, read.arrays.get({"charges": "charge"}.get(key, key)))
        if read_value is None and key in ("initial_magmoms", "initial_charges"):
            continue
        assert read_value is not None, key
        if value.dtype.kind == "f":
            close(np.reshape(read_value, value.shape), value)
        else:
            assert np.reshape(read_value, value.shape).tolist() == value.tolist(), key


def full_stress(stress):
    stress = np.asarray(stress, dtype=float)
    if stress.shape == (6,):
        xx, yy, zz, yz, xz, xy = stress
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    return stress


def close(read, expected, exact=False):
    read, expected = np.asarray(read, dtype=float), np.asarray(expected, dtype=float)
    assert read.shape == expected.shape
    if exact:
        np.testing.assert_array_equal(read, expected)
    else:
        # 8 decimals in the columns
        np.testing.assert_allclose(read, expected, rtol=1e-15, atol=5.1e-9)


def same_value(read, value, key):
    if value is None:
        assert read is True, key
    elif isinstance(value, dict):
        assert read == json.loads(json.dumps(value)), key
    elif isinstance(value, str):
        assert read == value, key
    elif isinstance(value, (list, tuple)) and any(isinstance(v, str) for v in value):
        assert list(read) == list(value), key
    elif isinstance(value, (list, tuple)) and not any(v is None for v in value):
        np.testing.assert_array_equal(np.asarray(read, dtype=float), np.asarray(value, dtype=float), err_msg=key)
    elif isinstance(value, (list, tuple)):
        assert list(read) == list(value), key
    elif key == "stress" and np.shape(value) == (6,):
        np.testing.assert_array_equal(np.asarray(read, dtype=float).reshape(3, 3), full_stress(value))
    elif np.asarray(value).dtype.kind in "U":
        assert np.asarray(read).tolist() == np.asarray(value).tolist(), key
    else:
        read_array, value_array = np.asarray(read), np.asarray(value)
        if value_array.size == 0:
            return
        np.testing.assert_array_equal(read_array.astype(float).reshape(value_array.shape),
                                      value_array.astype(float), err_msg=key)


# --- render(): the switch, the checks, the options ----------------------------------------------

@pytest.mark.parametrize("writer", ["auto", "ase", "fast"])
def test_render_gives_ase_text_with_every_writer(monkeypatch, writer):
    monkeypatch.setenv(WRITER_ENV, writer)
    for case in ("cu cell with energy forces stress", "info strings needing quotes", "FixCartesian", "no atoms"):
        atoms = COVERED[case]()
        assert render(atoms, EXTXYZ) == ase_text(atoms), case


def test_forced_fast_writer_names_what_it_does_not_cover(monkeypatch):
    monkeypatch.setenv(WRITER_ENV, "fast")
    with pytest.raises(UnwritableOutput, match=r"does not cover it \(per-atom 'z' has dtype complex128\).*auto"):
        render(with_arrays(z=np.ones(4, complex)), EXTXYZ)


def test_an_unknown_writer_choice_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv(WRITER_ENV, "quick")
    with pytest.raises(ValueError, match=f"{WRITER_ENV}='quick' is not one of auto, ase, fast"):
        render(cu(), EXTXYZ)


def test_other_writer_options_and_plain_xyz_are_left_to_ase(tmp_path):
    atoms = with_results(energy=1.0, forces=FORCES)
    assert render(atoms, {"format": "extxyz", "write_results": False}) == ase_text(atoms, write_results=False)
    assert render(atoms, {"format": "extxyz", "columns": ["symbols", "positions"]}) == \
        ase_text(atoms, columns=["symbols", "positions"])
    buffer = io.StringIO()
    ase.io.write(buffer, atoms, format="xyz", parallel=False)
    assert render(atoms, {"format": "xyz"}) == buffer.getvalue()


UNWRITABLE = {
    "newline in an info string": (lambda: with_info(note="first\nsecond"), "'note' holds a string with a line break"),
    "newline in an info key": (lambda: with_info(**{"bad\nkey": 1}), "info key 'bad\\nkey' holds a line break"),
    "non-string info key": (lambda: _with_info_key(3), "info key 3 is a int, not a string"),
    "empty info string": (lambda: with_info(empty=""), "'empty' holds ''"),
    "backslash in an info string": (lambda: with_info(path="C:\\data"), "'path' holds"),
    "quote and backslash": (lambda: with_info(q='a\\"b c'), "'q' holds"),
    "per-atom string with white space": (lambda: with_arrays(label=np.array(["a b", "c", "d", "e"])),
                                         "per-atom string array 'label'"),
    "array key with a colon": (lambda: with_arrays(**{"a:b": np.zeros(4)}), "'a:b' cannot be an extended XYZ column"),
}


def _with_info_key(key):
    atoms = cu()
    atoms.info[key] = 1.0
    return atoms


@pytest.mark.parametrize("writer", ["auto", "ase"])
@pytest.mark.parametrize("case", list(UNWRITABLE))
def test_unwritable_outputs_are_refused_naming_the_key(monkeypatch, writer, case):
    monkeypatch.setenv(WRITER_ENV, writer)
    make, message = UNWRITABLE[case]
    with pytest.raises(UnwritableOutput) as raised:
        render(make(), EXTXYZ)
    assert message in str(raised.value)


def test_output_files_are_the_same_with_either_writer(tmp_path, monkeypatch):
    from wfl_like import OutputSpec

    structures = [COVERED[case]() for case in ("info and results together", "FixAtoms", "molecule without cell",
                                               "per-atom int bool str arrays", "no atoms")]
    for writer in ("ase", "auto"):
        monkeypatch.setenv(WRITER_ENV, writer)
        with OutputSpec(tmp_path / f"{writer}.xyz") as out:
            for index, atoms in enumerate(structures):
                out.store(atoms, f" / {index}")
    assert (tmp_path / "auto.xyz").read_bytes() == (tmp_path / "ase.xyz").read_bytes()
    assert len(ase.io.read(tmp_path / "auto.xyz", ":")) == len(structures)


def test_render_is_the_same_in_a_worker_process():
    # workers render after the throughput change: render and its settings travel by pickle
    atoms = COVERED["info and results together"]()
    payload = pickle.dumps((render, atoms, EXTXYZ))
    script = ("import pickle, sys\n"
              "render, atoms, kwargs = pickle.loads(sys.stdin.buffer.read())\n"
              "sys.stdout.buffer.write(render(atoms, kwargs).encode())\n")
    done = subprocess.run([sys.executable, "-c", script], input=payload, capture_output=True, check=True)
    assert done.stdout.decode() == ase_text(atoms)


@pytest.mark.parametrize("value", [1e16, 9.999999999999998e15, 1e-4, 9.9999e-5, 5e-324, -0.0, 0.1 + 0.2, 3.61, 1 / 3])
def test_lattice_numbers_are_written_as_ase_writes_them(value):
    # the cell's numbers go through Python floats, not numpy scalars: the text must not change
    atoms = Atoms("Cu", positions=[[0.0, 0.0, 0.0]], cell=[[value, 0.0, 1.5], [0.0, 2.0, value], [-value, 0.0, 3.0]],
                  pbc=True)
    assert extxyz_text(atoms) == ase_text(atoms)
