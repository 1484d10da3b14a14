"""Tests of wfl_like.map.map: any per-structure function over many structures."""

from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import bulk

from wfl_like import ConfigSet, OutputSpec
from wfl_like.map import map as wfl_map

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "data" / "cu_rattled.xyz"


@pytest.fixture(autouse=True)
def _no_worker_env(monkeypatch):
    monkeypatch.delenv("WFL_NUM_PYTHON_SUBPROCESSES", raising=False)


def cu_cells(n, seed=0):
    rng = np.random.default_rng(seed)
    cells = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.info["idx"] = i
        cells.append(atoms)
    return cells


# module-level functions, so that they reach worker processes whatever the start method

def shift_and_tag(atoms, dx, scale=1.0, *, tag):
    atoms.positions[:, 0] += dx
    atoms.positions *= scale
    atoms.info["tag"] = tag
    return atoms


def keep_even(atoms):
    return atoms if atoms.info["idx"] % 2 == 0 else None


def copies(atoms, n):
    out = []
    for i in range(n):
        copy = atoms.copy()
        copy.info["copy_i"] = i
        copy.positions[0, 2] += 0.01 * i
        out.append(copy)
    return out


def serial(chunk=1):
    return {"num_python_subprocesses": 0, "num_inputs_per_python_subprocess": chunk}


def test_function_gets_args_and_kwargs():
    cells = cu_cells(5)
    out = list(wfl_map(ConfigSet(cells), OutputSpec(), shift_and_tag, args=[0.5, 2.0], kwargs={"tag": "moved"},
                       autopara_info=serial()))
    assert [at.info["idx"] for at in out] == list(range(5))
    for atoms, original in zip(out, cells):
        assert atoms.info["tag"] == "moved"
        expected = original.positions.copy()
        expected[:, 0] += 0.5
        expected *= 2.0
        np.testing.assert_allclose(atoms.positions, expected)
    # the caller's structures are left alone
    assert "tag" not in cells[0].info


def test_without_args_and_kwargs():
    out = list(wfl_map(ConfigSet(cu_cells(4)), OutputSpec(), keep_even, autopara_info=serial()))
    assert [at.info["idx"] for at in out] == [0, 2]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_none_drops_the_structure(tmp_path, num_workers):
    autopara = {"num_python_subprocesses": num_workers, "num_inputs_per_python_subprocess": 2}
    in_memory = list(wfl_map(ConfigSet(cu_cells(7)), OutputSpec(), keep_even, autopara_info=autopara))
    assert [at.info["idx"] for at in in_memory] == [0, 2, 4, 6]
    wfl_map(ConfigSet(cu_cells(7)), OutputSpec(tmp_path / "even.xyz"), keep_even, autopara_info=autopara)
    assert [at.info["idx"] for at in ase.io.read(tmp_path / "even.xyz", ":")] == [0, 2, 4, 6]


def test_list_of_atoms_per_input_is_nested(tmp_path):
    cells = cu_cells(3)
    result = wfl_map(ConfigSet(cells), OutputSpec(), copies, args=[2], autopara_info=serial(2))
    flat = list(result)
    assert [(at.info["idx"], at.info["copy_i"]) for at in flat] == [(i, c) for i in range(3) for c in range(2)]
    assert [at.info["_ConfigSet_loc"] for at in flat] == [f" / {i} / {c}" for i in range(3) for c in range(2)]
    groups = list(result.groups())
    assert len(groups) == 3
    for i, group in enumerate(groups):
        members = list(group)
        assert [at.info["idx"] for at in members] == [i, i]
        assert [at.info["copy_i"] for at in members] == [0, 1]

    # the nesting survives a file
    file_result = wfl_map(ConfigSet(cells), OutputSpec(tmp_path / "copies.xyz"), copies, kwargs={"n": 3},
                          autopara_info=serial())
    file_groups = list(file_result.groups())
    assert [len(list(group)) for group in file_groups] == [3, 3, 3]
    assert [at.info["idx"] for at in list(file_groups)[2]] == [2, 2, 2]


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_two_workers_give_the_same_output_as_serial(tmp_path, kind):
    inputs = ConfigSet(EXAMPLE)
    outputs = {}
    for workers in (0, 2):
        spec = OutputSpec() if kind == "memory" else OutputSpec(tmp_path / f"out_{workers}.xyz")
        outputs[workers] = wfl_map(inputs, spec, shift_and_tag, args=[0.25], kwargs={"tag": "t"},
                                   autopara_info={"num_python_subprocesses": workers,
                                                  "num_inputs_per_python_subprocess": 3})
    serial_out, parallel_out = list(outputs[0]), list(outputs[2])
    assert len(serial_out) == len(parallel_out) == 40
    for s, p in zip(serial_out, parallel_out):
        assert s.info["structure_id"] == p.info["structure_id"]
        assert s.info["tag"] == p.info["tag"] == "t"
        np.testing.assert_array_equal(s.positions, p.positions)
    originals = ase.io.read(EXAMPLE, ":")
    np.testing.assert_allclose(parallel_out[5].positions[:, 1], originals[5].positions[:, 1])
    np.testing.assert_allclose(parallel_out[5].positions[:, 0], originals[5].positions[:, 0] + 0.25)
    if kind == "file":
        assert (tmp_path / "out_0.xyz").read_bytes() == (tmp_path / "out_2.xyz").read_bytes()


def test_two_workers_nest_like_serial():
    cells = cu_cells(6)
    results = []
    for workers in (0, 2):
        out = wfl_map(ConfigSet(cells), OutputSpec(), copies, args=[2],
                      autopara_info={"num_python_subprocesses": workers, "num_inputs_per_python_subprocess": 1})
        results.append([(at.info["_ConfigSet_loc"], at.info["copy_i"]) for at in out])
    assert results[0] == results[1] == [(f" / {i} / {c}", c) for i in range(6) for c in range(2)]
