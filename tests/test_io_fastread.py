"""Frames read from byte ranges equal what ase.io.read gives, with the C parser and with ASE's.

Every case is read three ways: ``ase.io.read`` (the reference), ``read_frames`` with the
C parser forced, and ``read_frames`` with ASE forced; the structures are compared in
every respect, Python and numpy types included.
"""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms, FixCartesian

import ase.io
from wfl_like.errors import InputFileError
from wfl_like.io import fastread
from wfl_like.io.fastread import READER_ENV, parse_frames, read_frames
from wfl_like.io.frames import index_frames

HAVE_C = fastread._c_parser() is not None
MODES = [pytest.param("c", marks=pytest.mark.skipif(not HAVE_C, reason="extxyz (libextxyz) not installed")), "ase"]


# --- a comparison that sees types -----------------------------------------------------


def assert_same(got, want, where="value"):
    """``got`` equals ``want``: same types (Python and numpy), dtypes, shapes, keys in order, values."""
    assert type(got) is type(want), f"{where}: {type(got).__name__} != {type(want).__name__}"
    if isinstance(want, np.ndarray):
        assert got.dtype == want.dtype, f"{where}: dtype {got.dtype} != {want.dtype}"
        assert got.shape == want.shape, f"{where}: shape {got.shape} != {want.shape}"
        if want.dtype == object:
            for k, (g, w) in enumerate(zip(got.ravel(), want.ravel())):
                assert_same(g, w, f"{where}[{k}]")
        else:
            assert np.array_equal(got, want, equal_nan=want.dtype.kind in "fc"), f"{where}: {got!r} != {want!r}"
    elif isinstance(want, dict):
        assert list(got) == list(want), f"{where}: keys {list(got)} != {list(want)}"
        for key in want:
            assert_same(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), f"{where}: length {len(got)} != {len(want)}"
        for k, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{k}]")
    elif isinstance(want, (float, np.floating)) and np.isnan(want):
        assert np.isnan(got), f"{where}: {got!r} != nan"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def assert_same_atoms(got, want, where="atoms"):
    assert type(got) is type(want)
    assert_same(got.arrays, want.arrays, f"{where}.arrays")
    assert_same(got.cell.array, want.cell.array, f"{where}.cell")
    assert_same(got.pbc, want.pbc, f"{where}.pbc")
    assert_same(got.info, want.info, f"{where}.info")
    assert_same(got.get_celldisp(), want.get_celldisp(), f"{where}.celldisp")
    assert [type(c) for c in got.constraints] == [type(c) for c in want.constraints], f"{where}.constraints"
    assert_same([c.todict() for c in got.constraints], [c.todict() for c in want.constraints],
                f"{where}.constraints")
    assert type(got.calc) is type(want.calc), f"{where}.calc"
    if want.calc is not None:
        assert_same(dict(sorted(got.calc.results.items())), dict(sorted(want.calc.results.items())),
                    f"{where}.calc.results")


def assert_same_frames(got, want):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert_same_atoms(g, w, f"frame {i}")


def test_assert_same_sees_types():
    # the helper itself: it must refuse what looks equal but is not
    with pytest.raises(AssertionError):
        assert_same({"a": 1}, {"a": np.int64(1)})
    with pytest.raises(AssertionError):
        assert_same(np.zeros(3, np.int32), np.zeros(3, np.int64))
    with pytest.raises(AssertionError):
        assert_same({"a": 1, "b": 2}, {"b": 2, "a": 1})
    with pytest.raises(AssertionError):
        assert_same([True, False], np.array([True, False]))
    assert_same({"x": [np.float64("nan")]}, {"x": [np.float64("nan")]})


# --- the cases ------------------------------------------------------------------------


def _rng():
    return np.random.default_rng(7)


def cu_with_results(n_frames=4):
    rng = _rng()
    frames = []
    for i in range(n_frames):
        atoms = bulk("Cu", cubic=True) * (2, 2, 2)
        atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
        n = len(atoms)
        atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal()), free_energy=float(rng.normal()),
                                           forces=rng.normal(size=(n, 3)), stress=rng.normal(size=6),
                                           magmoms=rng.normal(size=n), charges=rng.normal(size=n),
                                           energies=rng.normal(size=n))
        atoms.info["_ConfigSet_loc"] = f" / {i} / 0"
        atoms.arrays["custom_real"] = rng.normal(size=n)
        atoms.arrays["custom_vec"] = rng.normal(size=(n, 3))
        atoms.arrays["custom_int"] = rng.integers(-5, 5, size=n)
        atoms.arrays["custom_bool"] = rng.random(n) > 0.5
        atoms.arrays["custom_str"] = np.array([f"s{k}" for k in range(n)])
        frames.append(atoms)
    return frames


def info_of_every_type():
    atoms = molecule("H2O", cell=[[5, 0, 0], [1, 6, 0], [0.5, 0.5, 7]], pbc=True)
    atoms.info.update({
        "an_int": 7, "negative": -3, "a_float": 2.5, "small": 1.25e-12, "tiny_int_float": 3.0, "yes": True,
        "no": False, "word": "relaxed", "spaced": "two words here", "unicode": "Å ü 中文",
        "int_vec": np.array([1, 2, 3]), "float_vec": np.array([0.5, 1.5, -2.25]),
        "bool_vec": np.array([True, False, True]), "int_3x3": np.arange(9).reshape(3, 3),
        "float_3x3": np.arange(9.0).reshape(3, 3) / 7,
        "config_type": "bulk", "virial": np.arange(9.0).reshape(3, 3) + 0.5, "full_repr": 0.1 + 0.2,
    })
    return [atoms]


def escaped_info():
    # quotes inside values and JSON objects: ASE's writer escapes them with backslashes
    atoms = molecule("CO")
    atoms.info.update({"with_quote": 'say "hi"', "nested": {"k": [1, 2]}, "mixed": [1, "a"], "strings": ["a", "b c"]})
    return [atoms]


def constrained():
    fix_atoms = bulk("Si", cubic=True)
    fix_atoms.set_constraint(FixAtoms(indices=[0, 3]))
    fix_cart = bulk("Si", cubic=True)
    fix_cart.set_constraint([FixCartesian(1, mask=[True, False, True]), FixCartesian(4, mask=[False, False, True])])
    return [fix_atoms, fix_cart]


def cells_and_pbc():
    skewed = Atoms("CuAu", positions=[[0, 0, 0], [1.1, 1.2, 1.3]],
                   cell=[[3.0, 0.0, 0.0], [1.5, 2.6, 0.0], [0.7, 0.9, 4.1]], pbc=[True, False, True])
    slab = Atoms("Al2", positions=[[0, 0, 0], [1, 1, 1]], cell=[4, 4, 10], pbc=[True, True, False])
    free = molecule("CH4")
    one = Atoms("He", positions=[[0.1, 0.2, 0.3]])
    one_periodic = Atoms("Fe", cell=np.eye(3) * 2.87, pbc=True)
    return [skewed, slab, free, one, one_periodic]


def unicode_arrays():
    atoms = molecule("NH3")
    atoms.arrays["label"] = np.array(["x", "yy", "zzz", "w"])
    atoms.info["note"] = "naïve café"
    labelled = molecule("CO")
    labelled.arrays["tag_é"] = np.array(["é", "ü"])
    return [atoms, labelled]


WRITTEN_CASES = {
    "cu_with_results": cu_with_results,
    "info_of_every_type": info_of_every_type,
    "escaped_info": escaped_info,
    "constrained": constrained,
    "cells_and_pbc": cells_and_pbc,
    "unicode_arrays": unicode_arrays,
}

# Cases whose every frame the C parser must read (plain syntax, no escapes).
ALL_BY_C = {"cu_with_results", "info_of_every_type", "constrained", "cells_and_pbc"}

# Hand-written text: comment-line syntax of every kind ASE's parser takes, odd files.
H_LINE = "H 0.0 0.0 0.0\n"
TEXT_CASES = {
    "key_alone": f"1\nflag other=1\n{H_LINE}",
    "spaces_around_equals": f"1\na = 1 b= 2.5 c =T\n{H_LINE}",
    "single_quotes": f"1\na='x y' b='1 2'\n{H_LINE}",
    "braces": f"1\na={{1 2 3}} b={{x}}\n{H_LINE}",
    "new_style_arrays": f"1\na=[1, 2, 3] b=[1.5,2] c=[T, F] d=[1]\n{H_LINE}",
    "backslash": f'1\na="x\\"y" b=p\\ q\n{H_LINE}',
    "json": '1\na="_JSON {\\"k\\": [1, 2]}" b="_JSON [1, 2]"\n' + H_LINE,
    "uid": f"1\nuid=123 UID=45 id=6\n{H_LINE}",
    "numbers_ase_only": f"1\nf=1d0 n=nan i=inf u=1_000 big=99999999999999999999 h=0x10 e=1E5 p=+3 z=-0\n{H_LINE}",
    "bool_words": f"1\na=T b=F c=true d=FALSE e=True f=t g=\"T F T\"\n{H_LINE}",
    "comma_lists": f"1\na=1,2,3 b=\"1, 2\"\n{H_LINE}",
    "plain_comment": "2\nwater molecule from a paper\nO 0 0 0\nH 0 0 1\n",
    "empty_comment": f"1\n\n{H_LINE}",
    "blank_comment_spaces": f"1\n   \n{H_LINE}",
    "lattice_ints": f'1\nLattice="2 0 0 0 3 0 0 0 4" pbc="T F T"\n{H_LINE}',
    "pbc_single": f'1\nLattice="2 0 0 0 3 0 0 0 4" pbc=F\n{H_LINE}',
    "stress_9": f'1\nLattice="2 0 0 0 3 0 0 0 4" stress="1 2 3 2 4 5 3 5 6" energy=-1.5\n{H_LINE}',
    "duplicate_key": f"1\na=1 b=2 a=3\n{H_LINE}",
    "windows_line_ends": "2\r\nLattice=\"2 0 0 0 2 0 0 0 2\" energy=1.5 pbc=\"T T T\"\r\nH 0 0 0\r\nO 1 1 1\r\n",
    "no_final_newline": '1\nenergy=2.0\nH 0.5 0.5 0.5',
    "trailing_blank_lines": f"1\nenergy=2.0\n{H_LINE}\n\n   \n",
    "lower_case_species": "2\nx=1\ncu 0 0 0\nAU 1 1 1\n",
    "atomic_numbers_column": "2\nProperties=Z:I:1:pos:R:3\n29 0 0 0\n79 1 1 1\n",
    "species_and_numbers": "1\nProperties=species:S:1:pos:R:3:Z:I:1\nH 0 0 0 8\n",
    "extra_columns": "1\nnote=extra\nH 0 0 0 9.5 extra\n",
    "tabs": "1\na=1\tb=2\nH\t0\t0\t0\n",
    "full_precision": "1\nenergy=-0.30000000000000004\nH 0.1000000000000000055511 1e-310 -2.2250738585072014e-308\n",
    "exponent_reals": "1\nx=1\nH 1e5 -2.5E-3 .5\n",
    "integer_column_signs": "2\nProperties=species:S:1:pos:R:3:n:I:1\nH 0 0 0 +5\nH 0 0 1 007\n",
    "logical_column": "3\nProperties=species:S:1:pos:R:3:flag:L:1\nH 0 0 0 T\nH 0 0 1 False\nH 0 0 2 True\n",
    "logical_words_ase_reads_as_false": "2\nProperties=species:S:1:pos:R:3:flag:L:1\nH 0 0 0 TRUE\nH 0 0 1 true\n",
    "move_mask_1": "2\nProperties=species:S:1:pos:R:3:move_mask:L:1\nH 0 0 0 T\nH 0 0 1 F\n",
    "move_mask_3": "1\nProperties=species:S:1:pos:R:3:move_mask:L:3\nH 0 0 0 T F T\n",
    "initial_charges": ("2\nProperties=species:S:1:pos:R:3:initial_charges:R:1:masses:R:1\n"
                        "H 0 0 0 0.5 2.0\nH 0 0 1 -0.5 1.0\n"),
    "velocities": "1\nProperties=species:S:1:pos:R:3:momenta:R:3\nH 0 0 0 1 2 3\n",
    "vec_lines": "1\ncomment\nH 0 0 0\nVEC1 2.0 0.0 0.0\nVEC2 0.0 2.0 0.0\n",
    "zero_atoms": '0\nLattice="2 0 0 0 2 0 0 0 2" energy=1.0 pbc="T T T"\n',
    "zero_then_one": f"0\nenergy=1.0\n1\nenergy=2.0\n{H_LINE}",
    "unicode_in_bare_value": f"1\nname=café size=2\n{H_LINE}",
    "location_key": f'1\n_ConfigSet_loc=" / 3 / 1" energy=1.0\n{H_LINE}',
    "config_type_number_like": f"1\nconfig_type=1.0e3x\n{H_LINE}",
    "int32_range_column": "1\nProperties=species:S:1:pos:R:3:n:I:1\nH 0 0 0 2147483647\n",
}

# Text ase.io.read refuses: read_frames must refuse it too, with InputFileError.
BAD_TEXT_CASES = {
    "hex_real_column": "1\nx=1\nH 0x1p3 0 0\n",
    "fortran_real_column": "1\nx=1\nH 1d0 0 0\n",
    "integer_overflow_column": "1\nProperties=species:S:1:pos:R:3:n:I:1\nH 0 0 0 3000000000\n",
    "real_in_integer_column": "1\nProperties=species:S:1:pos:R:3:n:I:1\nH 0 0 0 1.5\n",
    "too_few_columns": "1\nx=1\nH 0 0\n",
    "unknown_element": "1\nx=1\nQq 0 0 0\n",
    "stress_of_six": '1\nstress="1 2 3 4 5 6"\nH 0 0 0\n',
    "lattice_new_style": "1\nLattice=[[2, 0, 0], [0, 3, 0], [0, 0, 4]]\nH 0 0 0\n",
    "bad_json": '1\na="_JSON {nope"\nH 0 0 0\n',
}


def _write_case(tmp_path, name):
    path = tmp_path / f"{name}.xyz"
    if name in WRITTEN_CASES:
        ase.io.write(path, WRITTEN_CASES[name](), format="extxyz")
    else:
        path.write_bytes({**TEXT_CASES, **BAD_TEXT_CASES}[name].encode())
    return path


def _reference(path):
    return ase.io.read(path, index=":", format="extxyz", parallel=False)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(WRITTEN_CASES) + sorted(TEXT_CASES))
def test_read_frames_equals_ase(tmp_path, monkeypatch, name, mode):
    path = _write_case(tmp_path, name)
    want = _reference(path)
    monkeypatch.setenv(READER_ENV, mode)
    got = read_frames(path, 0, path.stat().st_size)
    assert_same_frames(got, want)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(BAD_TEXT_CASES))
def test_frames_ase_refuses_are_refused(tmp_path, monkeypatch, name, mode):
    path = _write_case(tmp_path, name)
    with pytest.raises(Exception):  # noqa: B017 - the reference: ASE refuses this text, whatever its error
        _reference(path)
    monkeypatch.setenv(READER_ENV, mode)
    with pytest.raises(InputFileError, match=rf"{name}\.xyz.*frame 0 \(line 1\)"):
        read_frames(path, 0, path.stat().st_size, first_frame=0, first_line=1)


@pytest.mark.skipif(not HAVE_C, reason="extxyz (libextxyz) not installed")
@pytest.mark.parametrize("name", sorted(ALL_BY_C))
def test_plain_frames_go_through_c(tmp_path, name):
    # the C path is not a fallback that never runs: frames ASE's writer makes are read by it
    path = _write_case(tmp_path, name)
    by_c = [c for _, c in fastread._parse(path.read_bytes(), str(path), 0, 1, "c")]
    assert by_c and all(by_c)


@pytest.mark.skipif(not HAVE_C, reason="extxyz (libextxyz) not installed")
def test_c_path_takes_the_common_syntax(tmp_path):
    names = ["spaces_around_equals", "new_style_arrays", "bool_words", "plain_comment", "windows_line_ends",
             "no_final_newline", "trailing_blank_lines", "lower_case_species", "move_mask_3", "tabs",
             "unicode_in_bare_value", "stress_9", "numbers_ase_only", "logical_column"]
    for name in names:
        path = _write_case(tmp_path, name)
        assert all(c for _, c in fastread._parse(path.read_bytes(), str(path), 0, 1, "c")), name


@pytest.mark.skipif(not HAVE_C, reason="extxyz (libextxyz) not installed")
def test_frames_c_would_misread_go_to_ase(tmp_path):
    # libextxyz reads these differently from ASE; they must not take the C path
    for name in ["logical_words_ase_reads_as_false", "backslash", "vec_lines", "zero_atoms", "extra_columns"]:
        path = _write_case(tmp_path, name)
        flags = [c for _, c in fastread._parse(path.read_bytes(), str(path), 0, 1, "c")]
        assert not any(flags), name


@pytest.mark.parametrize("mode", MODES)
def test_ranges_of_the_index_read_their_frames(tmp_path, monkeypatch, mode):
    frames = cu_with_results(6) + cells_and_pbc() + info_of_every_type()
    path = tmp_path / "mixed.xyz"
    ase.io.write(path, frames, format="extxyz")
    want = _reference(path)
    monkeypatch.setenv(READER_ENV, mode)
    index = index_frames(path, use_cache=False)
    for start, stop in [(0, 1), (2, 5), (5, index.n_frames), (0, index.n_frames)]:
        got = read_frames(path, int(index.offsets[start]), int(index.offsets[stop]), first_frame=start)
        assert_same_frames(got, want[start:stop])
    assert read_frames(path, 10, 10) == []


@pytest.mark.parametrize("mode", MODES)
def test_parse_frames_reads_bytes_in_memory(tmp_path, monkeypatch, mode):
    path = tmp_path / "cu.xyz"
    ase.io.write(path, cu_with_results(3), format="extxyz")
    monkeypatch.setenv(READER_ENV, mode)
    data = path.read_bytes()
    assert_same_frames(parse_frames(data, source=str(path)), _reference(path))


def test_error_names_file_frame_and_line(tmp_path):
    path = tmp_path / "broken.xyz"
    good = "1\nx=1\nH 0 0 0\n"
    path.write_text(good * 3 + "1\nx=1\nH zero 0 0\n")
    index = index_frames(path, use_cache=False)
    with pytest.raises(InputFileError, match=r"broken\.xyz.*frame 3 \(line 10\).*extended XYZ"):
        read_frames(path, 0, path.stat().st_size, first_frame=0, first_line=1)
    with pytest.raises(InputFileError, match=r"frame 3 \(line 10\)"):
        read_frames(path, int(index.offsets[2]), int(index.offsets[4]), first_frame=2, first_line=7)


def test_range_past_the_end_of_a_changed_file(tmp_path):
    path = tmp_path / "short.xyz"
    path.write_text("1\nx=1\nH 0 0 0\n")
    with pytest.raises(InputFileError, match=r"short\.xyz.*changed since it was indexed"):
        read_frames(path, 0, 1000)
    with pytest.raises(InputFileError, match="does not exist"):
        read_frames(tmp_path / "missing.xyz", 0, 10)


def test_range_that_cuts_a_frame(tmp_path):
    path = tmp_path / "cut.xyz"
    path.write_text("2\nx=1\nH 0 0 0\nH 0 0 1\n")
    with pytest.raises(InputFileError, match=r"cut\.xyz.*ends inside this frame of 2 atoms"):
        read_frames(path, 0, 14)


def test_reader_choice_is_checked(monkeypatch, tmp_path):
    path = tmp_path / "one.xyz"
    path.write_text("1\nx=1\nH 0 0 0\n")
    monkeypatch.setenv(READER_ENV, "fortran")
    with pytest.raises(ValueError, match=f"{READER_ENV}='fortran' is not one of auto, c, ase"):
        read_frames(path, 0, path.stat().st_size)


def test_values_equal_for_many_random_numbers(tmp_path, monkeypatch):
    # the C parser's decimal conversion against Python's, at full precision and at %16.8f
    rng = np.random.default_rng(3)
    atoms = Atoms("H200", positions=rng.normal(scale=1e3, size=(200, 3)) * 10.0 ** rng.integers(-20, 20, (200, 1)))
    atoms.arrays["exact"] = rng.normal(size=200) * 10.0 ** rng.integers(-300, 300, 200)
    atoms.info["energy_like"] = float(rng.normal())
    path = tmp_path / "numbers.xyz"
    ase.io.write(path, atoms, format="extxyz")
    text = path.read_text().splitlines()
    # rewrite the columns with repr() so that every digit counts
    rows = [" ".join(["H"] + [repr(float(v)) for v in list(p) + [e]])
            for p, e in zip(atoms.positions, atoms.arrays["exact"])]
    path.write_text("\n".join(text[:2] + rows) + "\n")
    want = _reference(path)
    for mode in [m for m in ("c", "ase") if m == "ase" or HAVE_C]:
        monkeypatch.setenv(READER_ENV, mode)
        assert_same_frames(read_frames(path, 0, path.stat().st_size), want)


def test_without_extxyz_every_frame_is_read_by_ase(tmp_path):
    # a fresh interpreter in which the extxyz package cannot be imported
    import subprocess
    import sys

    path = tmp_path / "cu.xyz"
    ase.io.write(path, cu_with_results(2), format="extxyz")
    script = (
        "import sys; sys.modules['extxyz'] = None\n"
        "import os\n"
        "from wfl_like.io import fastread\n"
        f"path = {str(path)!r}\n"
        "assert fastread._c_parser() is None\n"
        "frames = fastread._parse(open(path, 'rb').read(), path, 0, 1, 'auto')\n"
        "print(len(frames), sum(c for _, c in frames))\n"
        f"os.environ[{READER_ENV!r}] = 'c'\n"
        "try:\n"
        "    fastread.read_frames(path, 0, os.path.getsize(path))\n"
        "except RuntimeError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "2 0"
    assert f"{READER_ENV}=c but libextxyz's C parser cannot be used here" in lines[1]


def _random_comment(rng):
    """A comment line of random pairs drawn from the syntax both parsers meet in files."""
    words = ["1", "-7", "+3", "007", "2.5", "-1e-3", ".5", "5.", "1E5", "nan", "inf", "1d0", "0x1f", "1_000",
             "T", "F", "true", "FALSE", "t", "abc", "x.y", "é", "a/b", "12345678901234567890", "-0", ":", "1,2"]
    keys = ["a", "b_c", "Lattice", "stress", "virial", "pbc", "uid", "energy", "magmom", "x-y", "k1", "é"]
    pairs = []
    for _ in range(rng.integers(0, 6)):
        key = keys[rng.integers(len(keys))]
        form = rng.integers(7)
        inner = " ".join(words[i] for i in rng.integers(len(words), size=rng.integers(1, 10)))
        if form == 0:
            pairs.append(key)
        elif form == 1:
            pairs.append(f"{key}={words[rng.integers(len(words))]}")
        elif form == 2:
            pairs.append(f'{key}="{inner}"')
        elif form == 3:
            pairs.append(f"{key}={{{inner}}}")
        elif form == 4:
            pairs.append(f"{key}=[{inner.replace(' ', ', ')}]")
        elif form == 5:
            pairs.append(f"{key} = '{inner}'")
        else:
            pairs.append(f'{key}="_JSON [{inner.replace(" ", ", ")}]"')
    return " ".join(pairs)


@pytest.mark.skipif(not HAVE_C, reason="extxyz (libextxyz) not installed")
def test_random_comment_lines_read_as_ase_reads_them(tmp_path, monkeypatch):
    rng = np.random.default_rng(11)
    monkeypatch.setenv(READER_ENV, "c")
    path = tmp_path / "random.xyz"
    by_c = 0
    for trial in range(300):
        comment = _random_comment(rng)
        path.write_text(f"2\n{comment}\nH 0.5 0 0\nO 0 1.25 0\n", encoding="utf-8")
        try:
            want = _reference(path)
        except Exception:  # ASE refuses the line: so must read_frames
            with pytest.raises(InputFileError):
                read_frames(path, 0, path.stat().st_size)
            continue
        got = fastread._parse(path.read_bytes(), str(path), 0, 1, "c")
        by_c += got[0][1]
        try:
            assert_same_frames([atoms for atoms, _ in got], want)
        except AssertionError as exc:
            raise AssertionError(f"trial {trial}, comment line {comment!r}: {exc}") from None
    assert by_c > 100  # most of them went through the C path, not around it


ATOM_TOKENS = {"R": ["1", "-2.5", "1e5", ".5", "5.", "nan", "1d0", "0x10", "+1.5", "-0", "1E-300", "abc", "T"],
               "I": ["1", "-7", "+3", "007", "2147483647", "2147483648", "99999999999", "1.0", "1_0", "x"],
               "L": ["T", "F", "True", "False", "TRUE", "true", "false", "FALSE", "t", "1", "0"],
               "S": ["a", "Bc", "x_y", "1", "T", "é", "a'b", 'q"', "1d", "2p"]}
SPECIES = ["H", "he", "CU", "Xx", "X", "Pd", "P"]


def _random_frame(rng):
    """A frame of random columns of every type, with tokens each parser may read its own way."""
    columns = [(f"c{k}", "RISL"[rng.integers(4)], int(rng.integers(1, 4))) for k in range(rng.integers(0, 3))]
    if rng.random() < 0.2:
        columns.append(("move_mask", "L", int(rng.choice([1, 3]))))
    if rng.random() < 0.2:
        columns.append(("forces", "R", 3))
    properties = "species:S:1:pos:R:3" + "".join(f":{n}:{kind}:{c}" for n, kind, c in columns)
    n_atoms = int(rng.integers(1, 4))
    rows = []
    for _ in range(n_atoms):
        row = [SPECIES[rng.integers(len(SPECIES))]] + [ATOM_TOKENS["R"][rng.integers(5)] for _ in range(3)]
        for _, kind, count in columns:
            row += [ATOM_TOKENS[kind][rng.integers(len(ATOM_TOKENS[kind]))] for _ in range(count)]
        rows.append(" ".join(row))
    return f"{n_atoms}\nProperties={properties} e=1\n" + "\n".join(rows) + "\n"


@pytest.mark.skipif(not HAVE_C, reason="extxyz (libextxyz) not installed")
def test_random_atom_columns_read_as_ase_reads_them(tmp_path, monkeypatch):
    rng = np.random.default_rng(9)
    monkeypatch.setenv(READER_ENV, "c")
    path = tmp_path / "random.xyz"
    by_c = 0
    for trial in range(300):
        text = _random_frame(rng)
        path.write_text(text, encoding="utf-8")
        try:
            want = _reference(path)
        except Exception:  # ASE refuses the frame: so must read_frames
            with pytest.raises(InputFileError):
                read_frames(path, 0, path.stat().st_size)
            continue
        got = fastread._parse(path.read_bytes(), str(path), 0, 1, "c")
        by_c += got[0][1]
        try:
            assert_same_frames([atoms for atoms, _ in got], want)
        except AssertionError as exc:
            raise AssertionError(f"trial {trial}, frame {text!r}: {exc}") from None
    assert by_c > 30
