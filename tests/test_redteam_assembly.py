"""Red-team cases for the direct assembly of parsed frames (wfl_like.io.assembly).

Each file here is read by wfl_like's reader and by ``ase.io.read``; the two must agree.
Each case was once a discrepancy or an untested corner; they now all hold.
"""

import numpy as np
import pytest

import ase.io
from wfl_like import ConfigSet, OutputSpec, autoparallelize
from wfl_like.io import assembly
from wfl_like.io.fastread import READER_ENV, read_frames

from test_io_fastread import HAVE_C, assert_same_frames

pytestmark = pytest.mark.skipif(not HAVE_C, reason="extxyz (libextxyz) not installed: frames are all built by ASE")


@pytest.fixture(autouse=True)
def _fresh_layouts(monkeypatch):
    monkeypatch.setenv(READER_ENV, "auto")
    assembly.forget_layouts()
    yield
    assembly.forget_layouts()


def _read_both(path):
    got = read_frames(path, 0, path.stat().st_size)
    want = ase.io.read(path, ":", format="extxyz", parallel=False)
    return got, want


def _same_items(items):
    return items


def _outputs_of_both(tmp_path, path, op, monkeypatch, processes=0):
    """The output file of a run of ``op`` over the file, and that of a serial run over the frames ASE reads."""
    ours, theirs = tmp_path / "ours.xyz", tmp_path / "theirs.xyz"
    autoparallelize(op, ConfigSet(str(path)), OutputSpec(str(ours)),
                    autopara_info={"num_python_subprocesses": processes, "num_inputs_per_python_subprocess": 3})
    with monkeypatch.context() as patch:
        patch.setenv(READER_ENV, "ase")
        autoparallelize(op, ConfigSet(str(path)), OutputSpec(str(theirs)), autopara_info={"num_python_subprocesses": 0})
    return ours.read_bytes(), theirs.read_bytes()


# --- a per-atom column named "stress" ---------------------------------------------------------------

_STRESS_COLUMN = "Properties=species:S:1:pos:R:3:stress:R:3"
# two atoms first (the layout is learnt from it), then three: the column's array is 3x3
_STRESS_COLUMN_TEXT = (f"2\n{_STRESS_COLUMN}\nH 0 0 0 1.5 2.5 3.5\nH 0 0 1 1.5 2.5 3.5\n"
                       f"3\n{_STRESS_COLUMN}\nH 0 0 0 1.5 2.5 3.5\nH 0 0 1 4.5 5.5 6.5\nH 0 0 2 7.5 8.5 9.5\n")


def test_stress_column_of_three_atoms(tmp_path):
    path = tmp_path / "stress_column.xyz"
    path.write_text(_STRESS_COLUMN_TEXT)
    got, want = _read_both(path)
    assert want[1].calc.results["stress"].shape == (3, 3)
    # what a user asks for differs too: ASE symmetrises its 3x3, wfl_like gives the upper triangle
    assert np.array_equal(got[1].get_stress(), want[1].get_stress())
    assert_same_frames(got, want)


def test_stress_column_of_three_atoms_written(tmp_path, monkeypatch):
    path = tmp_path / "stress_column.xyz"
    path.write_text(_STRESS_COLUMN_TEXT)
    ours, theirs = _outputs_of_both(tmp_path, path, _same_items, monkeypatch)
    assert ours == theirs



# --- memory order of the 3x3 info values and of multi-column results -----------------------------

_ORDERED_TEXT = ('2\nLattice="2 0 0 0 2 0 0 0 2" virial="1 2 3 4 5 6 7 8 9" Properties=species:S:1:pos:R:3:forces:R:3\n'
                 'H 0 0 0 1 2 3\nH 1 1 1 4 5 6\n') * 2


def test_memory_order_of_virial_and_forces(tmp_path):
    import hashlib

    path = tmp_path / "ordered.xyz"
    path.write_text(_ORDERED_TEXT)
    got, want = _read_both(path)
    assert_same_frames(got, want)       # values agree: only the memory order differs
    for g, w in zip(got, want):
        for g_array, w_array in ((g.info["virial"], w.info["virial"]),
                                 (g.calc.results["forces"], w.calc.results["forces"])):
            assert g_array.ravel(order="K").tolist() == w_array.ravel(order="K").tolist()
            assert g_array.flags.c_contiguous == w_array.flags.c_contiguous
            with pytest.raises(ValueError):     # ASE's array is not C-contiguous: no plain buffer
                hashlib.sha1(w_array)
            with pytest.raises(ValueError):
                hashlib.sha1(g_array)


# --- what held: values of other kinds under a layout already learnt ----------------------------------

_LATTICE = 'Lattice="2 0 0 0 3 0 0 0 4"'
_SKEWED = 'Lattice="3 0 0 1.5 2.6 0 0.7 0.9 4.1"'
# comment lines whose frames share one layout (the same keys, Python types, shapes and dtypes) while
# their values differ in what they hold
_SAME_LAYOUT_COMMENTS = {
    "strings": ["a=abc", "a=1.0e3x", 'a="1 2 x"', "a=é", 'a="naïve café"', "a=nan1"],
    "energy_strings": ["energy=abc", "energy=1x", "energy=é"],
    "energy_bools": ["energy=T", "energy=F", "energy=true"],
    "special_floats": ["energy=nan", "energy=inf", "energy=-inf", "energy=1e400", "energy=-0.0", "energy=4.9e-324"],
    "bool_lists": ['dipole="T F T"', 'dipole="T F"', 'a="T T F F"'],
    "pbc_without_lattice": ['pbc="T F T"', 'pbc="F T F"', 'pbc="F F F"'],
    "pbc_words": [f"{_LATTICE} pbc=T", f"{_LATTICE} pbc=F"],
    "pbc_numbers": [f'{_LATTICE} pbc="1 0 1"', f'{_LATTICE} pbc="0 0 2"'],
    "cells": [_LATTICE, _SKEWED, 'Lattice="1 2 3 4 5 6 7 8 10"'],
    "stress_and_virial": [f'{_SKEWED} stress="1 2 3 4 5 6 7 8 9" virial="9 8 7 6 5 4 3 2 1"',
                          f'{_LATTICE} stress="9 8 7 6 5 4 3 2 1" virial="1 2 3 4 5 6 7 8 9"'],
    "json_lists": ["a='_JSON [\"x\", 1]'", "a='_JSON [\"x\", \"y\"]'", "a='_JSON [\"é\", null, true]'"],
    "json_dicts": ["a='_JSON {}'", "a='_JSON {\"k\": [1, 2]}'", "a='_JSON {\"k\": {\"j\": null}}'"],
    "attribute_names": ["cell=1 positions=2 numbers=3 calc=4 info=5 arrays=6 forces=7 magmoms=8 charges=9",
                        "cell=0 positions=-2 numbers=30 calc=40 info=50 arrays=60 forces=70 magmoms=80 charges=90"],
}


def _results_as_asked(atoms):
    asked = {}
    for method in ("get_potential_energy", "get_free_energy", "get_forces", "get_stress", "get_dipole_moment",
                   "get_magnetic_moments", "get_charges"):
        try:
            asked[method] = getattr(atoms, method)()
        except Exception as exc:  # noqa: BLE001 - the kind of refusal is compared too
            asked[method] = type(exc).__name__
    return asked


def _assert_alike(got, want):
    assert_same_frames(got, want)
    for g, w in zip(got, want):
        assert_same_frames([g.copy()], [w.copy()])
        g_asked, w_asked = _results_as_asked(g), _results_as_asked(w)
        assert list(g_asked) == list(w_asked)
        for method in w_asked:
            if isinstance(w_asked[method], str):
                assert g_asked[method] == w_asked[method], method
            else:
                assert np.array_equal(np.asarray(g_asked[method]), np.asarray(w_asked[method]), equal_nan=True), method


@pytest.mark.parametrize("group", sorted(_SAME_LAYOUT_COMMENTS))
def test_values_of_other_kinds_under_a_learnt_layout(tmp_path, group):
    comments = _SAME_LAYOUT_COMMENTS[group]
    rows = "H 0 0 0\nO 0.5 1.0 1.5\n"
    # every comment after every other, so that each value meets a layout learnt from another
    order = [c for first in comments for c in [first] + [other for other in comments if other != first]]
    path = tmp_path / "kinds.xyz"
    path.write_text("".join(f"2\n{comment}\n{rows}" for comment in order), encoding="utf-8")
    got, want = _read_both(path)
    _assert_alike(got, want)
    # and again, the layouts now learnt from this very file (a second file of the same layouts)
    again = tmp_path / "again.xyz"
    again.write_text("".join(f"2\n{comment}\n{rows}" for comment in reversed(order)), encoding="utf-8")
    got, want = _read_both(again)
    _assert_alike(got, want)


# --- what held: frames mutated, threads, forked workers ---------------------------------------------

def _mixed_file(tmp_path):
    """Frames of several layouts, calculator results and info arrays among them, each layout met often."""
    from test_io_fastread import cells_and_pbc, cu_with_results, info_of_every_type

    path = tmp_path / "mixed.xyz"
    frames = []
    for _ in range(3):
        frames += cu_with_results(2) + cells_and_pbc() + info_of_every_type()
    ase.io.write(path, frames, format="extxyz")
    with path.open("a") as handle:
        for energy in ("1.5", "2.5", "3.5"):
            handle.write(f"2\n{_LATTICE} a='_JSON {{\"k\": [1, 2]}}' l=\"T F T\" b=\"1 2 3\" energy={energy} "
                         f"dipole=\"1 2 3\"\nH 0 0 0\nO 1 1 1\n")
    return path


def _mutate_everything(value, seen):
    if id(value) in seen or isinstance(value, type) or callable(value):
        return
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            value[...] = "changed"
        elif value.flags.writeable and value.size:
            value[...] = 1
    elif isinstance(value, dict):
        for item in list(value.values()):
            _mutate_everything(item, seen)
        value["changed"] = 1
    elif isinstance(value, list):
        for item in value:
            _mutate_everything(item, seen)
        value.append("changed")
    elif hasattr(value, "__dict__"):
        for item in list(vars(value).values()):
            _mutate_everything(item, seen)


def test_a_mutated_frame_changes_no_other_frame_and_no_later_read(tmp_path):
    path = _mixed_file(tmp_path)
    want = ase.io.read(path, ":", format="extxyz", parallel=False)
    first = read_frames(path, 0, path.stat().st_size)
    for atoms in first[::2]:
        _mutate_everything(atoms, set())
    assert_same_frames(first[1::2], want[1::2])
    assert_same_frames(read_frames(path, 0, path.stat().st_size), want)


def test_two_threads_parse_at_once(tmp_path):
    import threading

    path = _mixed_file(tmp_path)
    want = ase.io.read(path, ":", format="extxyz", parallel=False)
    failures = []

    def read_often():
        for round_ in range(15):
            if round_ % 5 == 0:
                assembly.forget_layouts()       # both ways again, while the other thread reads
            try:
                assert_same_frames(read_frames(path, 0, path.stat().st_size), want)
            except AssertionError as exc:
                failures.append(str(exc))

    threads = [threading.Thread(target=read_often) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def _moved(items):
    for atoms in items:
        atoms.positions[0, 0] += 0.25
    return items


@pytest.mark.parametrize("op", [_same_items, _moved])
def test_forked_workers_with_learnt_layouts_write_what_ase_frames_give(tmp_path, op, monkeypatch):
    path = _mixed_file(tmp_path)
    read_frames(path, 0, path.stat().st_size)        # the parent has learnt every layout: the workers inherit them
    assert any(layout is not None for layout in assembly._LAYOUTS.values())
    ours, theirs = _outputs_of_both(tmp_path, path, op, monkeypatch, processes=2)
    assert ours == theirs
