"""Tests of wfl_like.calculators.generic.calculate: real calculators, real files, real workers."""

import os
import uuid
from collections import Counter
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

from wfl_like.errors import AutoparallelizeError
from wfl_like import AutoparaInfo, ConfigSet, OutputSpec
from wfl_like.calculators.generic import calculate
from helpers import cu_cells

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "data" / "cu_rattled.xyz"
SERIAL = {"num_python_subprocesses": 0}


@pytest.fixture(autouse=True)
def _no_worker_env(monkeypatch):
    # the number of workers must come from the test, not from the environment
    monkeypatch.delenv("WFL_NUM_PYTHON_SUBPROCESSES", raising=False)


# --- helpers and module-level calculators (module level so that they pickle) -------------



def cu_cluster():
    """A non-periodic 6-atom Cu cluster."""
    atoms = Atoms("Cu6", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5],
                                    [2.5, 2.5, 0.1], [0.1, 2.5, 2.5]], pbc=False)
    atoms.info["idx"] = "cluster"
    return atoms


def direct_emt(atoms):
    """Energy, forces and stress (None if not periodic) from a plain ASE EMT evaluation."""
    atoms = atoms.copy()
    atoms.calc = EMT()
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    stress = atoms.get_stress() if atoms.pbc.all() else None
    return energy, forces, stress


def assert_matches_direct(atoms, prefix="EMT_", **tol):
    tol = tol or {"rtol": 1e-12, "atol": 1e-12}
    energy, forces, stress = direct_emt(atoms)
    np.testing.assert_allclose(atoms.info[prefix + "energy"], energy, **tol)
    np.testing.assert_allclose(atoms.arrays[prefix + "forces"], forces, **tol)
    if stress is None:
        assert prefix + "stress" not in atoms.info
    else:
        np.testing.assert_allclose(atoms.info[prefix + "stress"], stress, **tol)


class BadStructureError(RuntimeError):
    pass


class FailingEMT(EMT):
    """EMT that refuses structures with ``info["bad"]``."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        if atoms is not None and atoms.info.get("bad"):
            raise BadStructureError(f"refusing structure {atoms.info.get('idx')}")
        super().calculate(atoms, properties, system_changes)


class MarkerEMT(EMT):
    """EMT that leaves a file named after its process in ``marker_dir`` each time it is constructed."""

    def __init__(self, marker_dir, **kwargs):
        super().__init__(**kwargs)
        Path(marker_dir, f"{os.getpid()}-{uuid.uuid4().hex}").touch()


_pulled = []


def counting_inputs(structures):
    """A generator over ``structures`` that records how many were taken from it."""
    for atoms in structures:
        _pulled.append(atoms.info["idx"])
        yield atoms


class PulledCount(Calculator):
    """Its "energy" is how many inputs had been taken from :func:`counting_inputs` when it ran."""

    implemented_properties = ["energy"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results["energy"] = float(len(_pulled))


def run(structures, calculator, num_workers=0, chunk=None, outputs=None, **kwargs):
    autopara = {"num_python_subprocesses": num_workers}
    if chunk is not None:
        autopara["num_inputs_per_python_subprocess"] = chunk
    result = calculate(ConfigSet(structures), OutputSpec() if outputs is None else outputs, calculator,
                       autopara_info=autopara, **kwargs)
    return list(result)


# --- results ------------------------------------------------------------------------------

@pytest.mark.parametrize("calculator", [EMT(), (EMT, [], {})], ids=["instance", "spec"])
def test_emt_results_stored_and_equal_to_direct_evaluation(calculator):
    cells = cu_cells(5)
    out = run(cells, calculator)
    assert [at.info["idx"] for at in out] == list(range(5))
    for atoms in out:
        assert isinstance(atoms.info["EMT_energy"], float)
        assert atoms.arrays["EMT_forces"].shape == (len(atoms), 3)
        assert np.shape(atoms.info["EMT_stress"]) == (6,)
        assert "EMT_calculation_failed" not in atoms.info
        assert_matches_direct(atoms)
    # the energies really differ between the structures: the comparison is not trivial
    assert len({at.info["EMT_energy"] for at in out}) == 5


@pytest.mark.parametrize("calculator", [EMT(), (EMT, [], {})], ids=["instance", "spec"])
def test_emt_with_two_workers_equal_to_direct_evaluation(calculator):
    out = run(cu_cells(6), calculator, num_workers=2, chunk=2)
    assert [at.info["idx"] for at in out] == list(range(6))
    for atoms in out:
        assert_matches_direct(atoms)


def test_custom_output_prefix():
    out = run(cu_cells(3), EMT(), output_prefix="my_")
    for atoms in out:
        assert_matches_direct(atoms, prefix="my_")
        assert not [k for k in list(atoms.info) + list(atoms.arrays) if k.startswith("EMT_")]


def test_properties_energy_only():
    out = run(cu_cells(3), (EMT, [], {}), properties=["energy"])
    for atoms in out:
        energy, _, _ = direct_emt(atoms)
        np.testing.assert_allclose(atoms.info["EMT_energy"], energy, rtol=1e-12)
        assert "EMT_forces" not in atoms.arrays
        assert "EMT_stress" not in atoms.info
        assert "EMT_calculation_failed" not in atoms.info


def test_nonperiodic_structure_gets_energy_and_forces_but_no_stress():
    structures = [cu_cells(1)[0], cu_cluster()]
    out = run(structures, EMT())
    periodic, cluster = out
    assert "EMT_stress" in periodic.info
    assert "EMT_stress" not in cluster.info
    assert "EMT_calculation_failed" not in cluster.info
    assert_matches_direct(periodic)
    assert_matches_direct(cluster)


# --- serial and parallel agree ----------------------------------------------------------

def test_serial_and_two_workers_identical_in_memory():
    cells = cu_cells(12, seed=3)
    serial = run(cells, (EMT, [], {}), num_workers=0, chunk=3)
    parallel = run(cells, (EMT, [], {}), num_workers=2, chunk=3)
    assert [at.info["idx"] for at in parallel] == [at.info["idx"] for at in serial] == list(range(12))
    for s, p in zip(serial, parallel):
        assert s.info["EMT_energy"] == p.info["EMT_energy"]
        np.testing.assert_array_equal(s.arrays["EMT_forces"], p.arrays["EMT_forces"])
        np.testing.assert_array_equal(s.info["EMT_stress"], p.info["EMT_stress"])
        np.testing.assert_array_equal(s.positions, p.positions)


def test_serial_and_two_workers_identical_files(tmp_path):
    cells = cu_cells(12, seed=4)
    ase.io.write(tmp_path / "in.xyz", cells)
    for name, workers in [("serial.xyz", 0), ("parallel.xyz", 2)]:
        result = calculate(ConfigSet(tmp_path / "in.xyz"), OutputSpec(tmp_path / name), EMT(),
                           autopara_info={"num_python_subprocesses": workers,
                                          "num_inputs_per_python_subprocess": 5})
        assert len(list(result)) == 12
    serial_bytes = (tmp_path / "serial.xyz").read_bytes()
    assert serial_bytes == (tmp_path / "parallel.xyz").read_bytes()
    back = ase.io.read(tmp_path / "parallel.xyz", ":")
    assert len(back) == 12
    for atoms in back:
        assert_matches_direct(atoms, rtol=1e-7, atol=1e-7)
    assert not list(tmp_path.glob(".*.partial"))


# --- failures ---------------------------------------------------------------------------

def _with_bad(cells, bad):
    for atoms in cells:
        if atoms.info["idx"] in bad:
            atoms.info["bad"] = True
    return cells


def assert_marked_or_computed(atoms, failed):
    """A structure FailingEMT refused carries the failure flag and no results; any other, the right results."""
    if failed:
        assert atoms.info["FailingEMT_calculation_failed"] is True
        assert "FailingEMT_energy" not in atoms.info
        assert "FailingEMT_forces" not in atoms.arrays
        assert "FailingEMT_stress" not in atoms.info
    else:
        assert "FailingEMT_calculation_failed" not in atoms.info
        assert_matches_direct(atoms, prefix="FailingEMT_")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_failing_structure_is_marked_and_others_computed(num_workers):
    cells = _with_bad(cu_cells(7, seed=5), bad={1, 4})
    out = run(cells, (FailingEMT, [], {}), num_workers=num_workers, chunk=2)
    assert [at.info["idx"] for at in out] == list(range(7))
    for atoms in out:
        assert_marked_or_computed(atoms, failed=atoms.info["idx"] in (1, 4))


def test_failed_flag_survives_a_file(tmp_path):
    cells = _with_bad(cu_cells(4, seed=6), bad={2})
    calculate(ConfigSet(cells), OutputSpec(tmp_path / "out.xyz"), FailingEMT(), autopara_info=SERIAL)
    back = ase.io.read(tmp_path / "out.xyz", ":")
    assert [bool(at.info.get("FailingEMT_calculation_failed", False)) for at in back] == [False, False, True, False]
    assert "FailingEMT_energy" in back[3].info and "FailingEMT_energy" not in back[2].info


@pytest.mark.parametrize("num_workers", [0, 2])
def test_raise_calc_exceptions_propagates(tmp_path, num_workers):
    cells = _with_bad(cu_cells(5, seed=7), bad={3})
    out_path = tmp_path / "out.xyz"
    # the calculator's exception makes the item fail (instead of being marked in its info):
    # every other structure is computed, then the call raises
    with pytest.raises(AutoparallelizeError, match="refusing structure 3") as info:
        calculate(ConfigSet(cells), OutputSpec(out_path), (FailingEMT, [], {}), raise_calc_exceptions=True,
                  autopara_info={"num_python_subprocesses": num_workers, "num_inputs_per_python_subprocess": 1})
    [failure] = info.value.failures
    assert failure.index == 3 and isinstance(failure.exception, BadStructureError)
    assert not out_path.exists()
    assert not list(tmp_path.glob(".*.partial"))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stale_results_under_the_prefix_are_not_kept(num_workers):
    cells = _with_bad(cu_cells(4, seed=8), bad={0, 2})
    for atoms in cells:
        atoms.info["FailingEMT_energy"] = 1234.5
        atoms.arrays["FailingEMT_forces"] = np.full((len(atoms), 3), 99.0)
        atoms.info["FailingEMT_stress"] = np.full(6, 99.0)
        atoms.info["FailingEMT_calculation_failed"] = True      # from an earlier, failed run
        atoms.info["other_energy"] = 7.0                         # another prefix: not ours to touch
    out = run(cells, FailingEMT(), num_workers=num_workers)
    for atoms in out:
        assert atoms.info["other_energy"] == 7.0
        assert_marked_or_computed(atoms, failed=atoms.info["idx"] in (0, 2))


def test_spec_that_does_not_build_a_calculator_is_an_error():
    # a spec whose constructor returns something else is a mistake of the caller, not a
    # failure of each structure
    with pytest.raises(AutoparallelizeError, match="calculator") as info:
        run(cu_cells(3), (dict, [], {}))
    assert all(isinstance(f.exception, TypeError) for f in info.value.failures)


def test_neither_instance_nor_spec_is_an_error():
    with pytest.raises(TypeError, match="calculator"):
        run(cu_cells(2), "EMT")


# --- construction once per worker, chunking --------------------------------------------

def test_spec_constructed_once_per_worker(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    out = run(cu_cells(8, seed=9), (MarkerEMT, [], {"marker_dir": str(markers)}), num_workers=2, chunk=1)
    assert len(out) == 8
    for atoms in out:
        assert_matches_direct(atoms, prefix="MarkerEMT_")
    per_pid = Counter(path.name.split("-")[0] for path in markers.iterdir())
    assert 1 <= len(per_pid) <= 2, per_pid
    assert set(per_pid.values()) == {1}, per_pid
    assert str(os.getpid()) not in per_pid      # built in the workers


def test_spec_constructed_once_when_serial(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    out = run(cu_cells(5, seed=10), (MarkerEMT, [], {"marker_dir": str(markers)}), num_workers=0, chunk=1)
    assert len(out) == 5
    assert [p.name.split("-")[0] for p in markers.iterdir()] == [str(os.getpid())]


@pytest.mark.parametrize("chunk, expected", [
    (None, [10] * 10 + [20] * 10 + [25] * 5),    # the default: 10 per chunk
    (4, [4] * 4 + [8] * 4 + [12] * 4 + [16] * 4 + [20] * 4 + [24] * 4 + [25]),
])
def test_chunk_size(chunk, expected):
    # Serially a chunk runs as soon as it is formed, so a structure sees as many inputs
    # taken as the chunks up to and including its own hold.
    _pulled.clear()
    autopara = dict(SERIAL) if chunk is None else {**SERIAL, "num_inputs_per_python_subprocess": chunk}
    result = calculate(counting_inputs(cu_cells(25, seed=11)), OutputSpec(), PulledCount(),
                       properties=["energy"], autopara_info=autopara)
    out = list(result)
    assert [at.info["idx"] for at in out] == list(range(25))
    assert [at.info["PulledCount_energy"] for at in out] == expected


# --- API --------------------------------------------------------------------------------

def test_docstring_lists_parameters():
    doc = calculate.__doc__
    assert doc
    for name in ["inputs", "outputs", "calculator", "properties", "output_prefix", "raise_calc_exceptions",
                 "autopara_info"]:
        assert f"{name} :" in doc, name


def test_wfl_call_style_with_keywords(tmp_path):
    out_path = tmp_path / "out.xyz"
    result = calculate(inputs=ConfigSet(EXAMPLE), outputs=OutputSpec(out_path), calculator=(EMT, [], {}),
                       properties=["energy", "forces"], output_prefix="wfl_",
                       autopara_info=AutoparaInfo(num_python_subprocesses=2, num_inputs_per_python_subprocess=7))
    assert out_path.exists()
    computed = list(result)
    inputs = ase.io.read(EXAMPLE, ":")
    assert len(computed) == len(inputs) == 40
    for atoms, original in zip(computed, inputs):
        assert atoms.info["structure_id"] == original.info["structure_id"]
        energy, forces, _ = direct_emt(original)
        np.testing.assert_allclose(atoms.info["wfl_energy"], energy, rtol=1e-7)
        np.testing.assert_allclose(atoms.arrays["wfl_forces"], forces, atol=1e-7)
        assert "wfl_stress" not in atoms.info


def test_outputs_none_returns_none():
    assert calculate(ConfigSet(cu_cells(2)), None, EMT(), autopara_info=SERIAL) is None
