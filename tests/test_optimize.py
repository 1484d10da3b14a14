"""Tests of wfl_like.generate.optimize: real relaxations with EMT, real files, real workers."""

import warnings

import ase.io
import ase.units
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.spacegroup.symmetrize import check_symmetry

from wfl_like import ConfigSet, OutputSpec
from wfl_like.errors import AutoparallelizeError, FailedItemsWarning
from wfl_like.generate.optimize import optimize, subselect_from_traj

PREFIX = "last_op__optimize_"
# quick relaxations of small cells; precon=None: PreconLBFGS would disable it (with a warning) anyway
QUICK = {"fmax": 0.02, "steps": 60, "precon": None}


@pytest.fixture(autouse=True)
def _no_worker_env(monkeypatch):
    # the number of workers must come from the test, not from the environment
    monkeypatch.delenv("WFL_NUM_PYTHON_SUBPROCESSES", raising=False)


def cu_cells(n, seed=0, stdev=0.05):
    """``n`` distinct rattled 4-atom fcc Cu cells, ``info["idx"] = i``."""
    rng = np.random.default_rng(seed)
    cells = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=rng.uniform(3.55, 3.7), cubic=True)
        atoms.positions += rng.normal(scale=stdev, size=atoms.positions.shape)
        atoms.info["idx"] = i
        cells.append(atoms)
    return cells


class FailingEMT(EMT):
    """EMT that raises on structures marked ``info["poison"]`` (module level, so that it pickles)."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        if atoms is not None and atoms.info.get("poison"):
            raise RuntimeError(f"poisoned structure {atoms.info.get('idx')}")
        super().calculate(atoms, properties, system_changes)


def trajectories(result, n_inputs):
    """The frames of a returned ConfigSet grouped by input, from their ``idx``."""
    groups = [[] for _ in range(n_inputs)]
    for frame in result:
        groups[frame.info["idx"]].append(frame)
    return groups


def emt_of(frame):
    atoms = frame.copy()
    atoms.set_constraint()
    atoms.calc = EMT()
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()


# --- what a trajectory holds -----------------------------------------------------------

def test_trajectory_frames_carry_labels_results_and_step_count(tmp_path):
    inputs = cu_cells(2)
    inputs[0].info["config_type"] = "start"
    inputs[0].info["last_op__md_energy"] = 1.0       # an earlier op's result, of the same key group
    out = tmp_path / "relaxed.xyz"
    optimize(ConfigSet(inputs), OutputSpec(out), EMT(), keep_symmetry=False, **QUICK)

    frames = ase.io.read(out, ":", parallel=False)
    for traj in trajectories(frames, 2):
        assert len(traj) > 2
        labels = [frame.info["optimize_config_type"] for frame in traj]
        assert labels == ["optimize_initial"] + ["optimize_mid"] * (len(traj) - 2) + ["optimize_last_converged"]
        assert traj[-1].info["optimize_n_steps"] == len(traj) - 1
        assert "optimize_n_steps" not in traj[0].info
        for frame in (traj[0], traj[-1]):
            assert frame.calc is None
            energy, forces, _ = emt_of(frame)
            assert frame.info[PREFIX + "energy"] == pytest.approx(energy, abs=1e-8)
            assert frame.arrays[PREFIX + "forces"] == pytest.approx(forces, abs=1e-6)
        assert np.abs(traj[-1].arrays[PREFIX + "forces"]).max() < QUICK["fmax"]
        assert "optimize_pressure_GPa" not in traj[-1].info       # fixed cell
        assert np.allclose(traj[-1].cell, inputs[traj[0].info["idx"]].cell)
    first = trajectories(frames, 2)[0]
    assert first[0].info["config_type"] == "start:optimize_initial"
    assert first[-1].info["config_type"] == "start:optimize_last_converged"
    assert all("last_op__md_energy" not in frame.info for frame in first)


def test_config_type_overwrite_and_left_alone():
    atoms = cu_cells(1)[0]
    atoms.info["config_type"] = "start"
    overwritten = list(optimize([atoms.copy()], OutputSpec(), EMT(), update_config_type="overwrite", **QUICK))
    untouched = list(optimize([atoms.copy()], OutputSpec(), EMT(), update_config_type=False, **QUICK))
    assert overwritten[-1].info["config_type"] == "optimize_last_converged"
    assert {frame.info["config_type"] for frame in untouched} == {"start"}


def test_unconverged_relaxation_is_labelled_so():
    traj = list(optimize(cu_cells(1, stdev=0.1), OutputSpec(), EMT(), fmax=1e-6, steps=3, precon=None))
    assert len(traj) == 4
    assert traj[-1].info["optimize_config_type"] == "optimize_last_unconverged"
    assert traj[-1].info["optimize_n_steps"] == 3


def test_step_interval_keeps_every_nth_frame_and_the_last():
    atoms = cu_cells(1, stdev=0.1)[0]
    every = list(optimize([atoms.copy()], OutputSpec(), EMT(), fmax=1e-4, steps=40, precon=None))
    third = list(optimize([atoms.copy()], OutputSpec(), EMT(), fmax=1e-4, steps=40, precon=None,
                          traj_step_interval=3))
    expected = every[::3] if (len(every) - 1) % 3 == 0 else every[::3] + [every[-1]]
    assert len(third) == len(expected)
    for got, want in zip(third, expected):
        assert got.positions == pytest.approx(want.positions, abs=1e-10)
    assert third[-1].info["optimize_config_type"] == "optimize_last_converged"


# --- variable cell -----------------------------------------------------------------------

def test_pressure_relaxes_the_cell_to_that_pressure():
    smax = 1e-3
    traj = list(optimize(cu_cells(1), OutputSpec(), EMT(), pressure=2.0, fmax=0.01, smax=smax, steps=200,
                         precon=None))
    last = traj[-1]
    assert last.info["optimize_config_type"] == "optimize_last_converged"
    assert last.info["optimize_pressure_GPa"] == 2.0
    assert not np.allclose(last.cell, traj[0].cell)
    stress = last.info[PREFIX + "stress"]            # Voigt order, eV/A^3
    # at equilibrium under a pressure p the stress is -p on the diagonal
    assert stress[:3] == pytest.approx([-2.0 * ase.units.GPa] * 3, abs=smax)
    assert np.abs(stress[3:]).max() < smax


def test_stress_mask_keeps_masked_cell_components():
    atoms = cu_cells(1)[0]
    traj = list(optimize([atoms], OutputSpec(), EMT(), pressure=5.0,
                         stress_mask=[True, False, False, False, False, False],
                         keep_symmetry=False, **{**QUICK, "steps": 10}))
    start, end = traj[0].cell.lengths(), traj[-1].cell.lengths()
    assert end[0] != pytest.approx(start[0], abs=1e-4)
    assert end[1:] == pytest.approx(start[1:], abs=1e-10)


def test_keep_symmetry_symmetrizes_and_keeps_the_space_group():
    atoms = bulk("Cu", "fcc", a=3.62, cubic=True)
    atoms.positions += np.random.default_rng(3).normal(scale=0.001, size=atoms.positions.shape)
    # fcc within symprec 0.01, not within 1e-5
    assert (check_symmetry(atoms, 0.01).number, check_symmetry(atoms, 1e-5).number) == (225, 1)
    kept = list(optimize([atoms.copy()], OutputSpec(), EMT(), pressure=1.0, **QUICK))
    free = list(optimize([atoms.copy()], OutputSpec(), EMT(), pressure=1.0, keep_symmetry=False, **QUICK))
    assert all(check_symmetry(frame, 1e-5).number == 225 for frame in kept)
    assert free[0].positions == pytest.approx(atoms.positions, abs=1e-12)
    assert check_symmetry(free[0], 1e-5).number != 225
    assert all(frame.constraints == [] for frame in kept)      # FixSymmetry is not left on the outputs


def test_per_structure_constraints_are_kept_and_honoured():
    atoms = cu_cells(1, stdev=0.1)[0]
    atoms.set_constraint(FixAtoms(indices=[0, 1]))
    traj = list(optimize([atoms.copy()], OutputSpec(), EMT(), **QUICK))
    assert traj[-1].positions[:2] == pytest.approx(atoms.positions[:2], abs=1e-12)
    assert not np.allclose(traj[-1].positions[2:], atoms.positions[2:])
    for frame in traj:
        assert len(frame.constraints) == 1 and isinstance(frame.constraints[0], FixAtoms)
        assert list(frame.constraints[0].index) == [0, 1]
    assert traj[0].constraints[0] is not traj[-1].constraints[0]


# --- selecting frames ----------------------------------------------------------------------

def test_last_converged_keeps_only_converged_last_frames(tmp_path):
    cells = cu_cells(3, stdev=0.1)
    relaxed = list(optimize([cells[1].copy()], OutputSpec(), EMT(), fmax=1e-3, steps=200, precon=None))[-1]
    relaxed.info = {"idx": 1}
    inputs = [cells[0], relaxed, cells[2]]       # only the already-relaxed one converges in 2 steps
    out = tmp_path / "converged.xyz"
    optimize(ConfigSet(inputs), OutputSpec(out), EMT(), fmax=1e-3, steps=2, precon=None,
             traj_subselect="last_converged")
    kept = ase.io.read(out, ":", parallel=False)
    assert [frame.info["idx"] for frame in kept] == [1]
    assert kept[0].info["optimize_config_type"] == "optimize_last_converged"

    last = list(optimize(ConfigSet(inputs), OutputSpec(), EMT(), fmax=1e-3, steps=2, precon=None,
                         traj_subselect="last"))
    assert [frame.info["idx"] for frame in last] == [0, 1, 2]
    assert [frame.info["optimize_config_type"] for frame in last] == [
        "optimize_last_unconverged", "optimize_last_converged", "optimize_last_unconverged"]


def test_subselect_from_traj_rules():
    traj = [atoms for atoms in cu_cells(3)]
    traj[-1].info["optimize_config_type"] = "optimize_last_unconverged"
    assert subselect_from_traj(traj) is traj
    assert subselect_from_traj(traj, "last") is traj[-1]
    assert subselect_from_traj(traj, "last_converged") is None
    traj[-1].info["optimize_config_type"] = "optimize_last_converged"
    assert subselect_from_traj(traj, "last_converged") is traj[-1]
    with pytest.raises(ValueError, match="traj_subselect"):
        subselect_from_traj(traj, "first")
    with pytest.raises(NotImplementedError):
        subselect_from_traj(traj, 5)


# --- several inputs, files, workers ----------------------------------------------------------

def test_file_inputs_give_one_trajectory_per_structure_in_each_output_file(tmp_path):
    cells = cu_cells(3)
    ase.io.write(tmp_path / "a.xyz", cells[:2], parallel=False)
    ase.io.write(tmp_path / "b.xyz", cells[2:], parallel=False)
    outs = [tmp_path / "a.out.xyz", tmp_path / "b.out.xyz"]
    optimize(ConfigSet([tmp_path / "a.xyz", tmp_path / "b.xyz"]), OutputSpec(outs), (EMT, [], {}),
             autopara_info={"num_python_subprocesses": 2, "num_inputs_per_python_subprocess": 1}, **QUICK)
    a_frames = ase.io.read(outs[0], ":", parallel=False)
    b_frames = ase.io.read(outs[1], ":", parallel=False)
    assert sorted({frame.info["idx"] for frame in a_frames}) == [0, 1]
    assert {frame.info["idx"] for frame in b_frames} == {2}
    # the frames of each trajectory come together, in order
    labels = [frame.info["optimize_config_type"] for frame in a_frames]
    assert labels.count("optimize_initial") == 2 and labels[0] == "optimize_initial"
    assert a_frames[labels.index("optimize_initial", 1) - 1].info["optimize_config_type"].startswith("optimize_last")


def test_same_outputs_whatever_the_processes_and_chunks_with_random_pressure():
    cells = cu_cells(4)
    runs = []
    for info in ({"num_python_subprocesses": 0},
                 {"num_python_subprocesses": 2, "num_inputs_per_python_subprocess": 1},
                 {"num_python_subprocesses": 2, "num_inputs_per_python_subprocess": 3}):
        result = optimize([atoms.copy() for atoms in cells], OutputSpec(), (EMT, [], {}),
                          pressure=("uniform", 0.0, 3.0),
                          rng=np.random.default_rng(7), autopara_info=info, keep_symmetry=False,
                          **{**QUICK, "steps": 4})
        runs.append(list(result))
    pressures = [frame.info["optimize_pressure_GPa"] for frame in runs[0] if "optimize_n_steps" in frame.info]
    assert len(pressures) == len(set(pressures)) == 4        # each structure drew its own
    for other in runs[1:]:
        assert len(other) == len(runs[0])
        for got, want in zip(other, runs[0]):
            assert got.info.keys() == want.info.keys()
            assert all(np.array_equal(got.info[key], want.info[key]) for key in want.info)
            assert np.array_equal(got.positions, want.positions)
            assert np.array_equal(got.cell.array, want.cell.array)
            assert np.array_equal(got.arrays[PREFIX + "forces"], want.arrays[PREFIX + "forces"])


# --- failures ------------------------------------------------------------------------------------

def poisoned_cells():
    cells = cu_cells(5)
    cells[2].info["poison"] = True
    return cells


def test_failing_relaxation_is_a_failed_item_and_the_others_complete(tmp_path):
    out = tmp_path / "relaxed.xyz"
    with pytest.warns(FailedItemsWarning):
        result = optimize(ConfigSet(poisoned_cells()), OutputSpec(out), (FailingEMT, [], {}),
                          autopara_info={"num_python_subprocesses": 2, "num_inputs_per_python_subprocess": 3},
                          **QUICK)
    assert [(failure.index, failure.reason) for failure in result.failures] == [
        (2, "RuntimeError: poisoned structure 2")]
    frames = ase.io.read(out, ":", parallel=False)
    assert sorted({frame.info["idx"] for frame in frames}) == [0, 1, 3, 4]
    # the chunk-mates of the failed one, run again one by one, give what a clean run gives
    clean = list(optimize([atoms for atoms in cu_cells(5) if atoms.info["idx"] != 2], OutputSpec(), EMT(), **QUICK))
    assert len(frames) == len(clean)
    for got, want in zip(frames, clean):
        assert got.positions == pytest.approx(want.positions, abs=1e-7)      # as extended XYZ keeps them


def test_without_skip_failures_the_call_raises_naming_the_item(tmp_path):
    with pytest.raises(AutoparallelizeError, match="item 2: RuntimeError: poisoned structure 2") as caught:
        optimize(ConfigSet(poisoned_cells()), OutputSpec(tmp_path / "relaxed.xyz"), (FailingEMT, [], {}),
                 skip_failures=False, autopara_info={"num_python_subprocesses": 2}, **QUICK)
    assert [failure.index for failure in caught.value.failures] == [2]
    assert not (tmp_path / "relaxed.xyz").exists()


def test_volume_under_the_structures_minimum_fails_that_structure():
    cells = cu_cells(2)
    cells[1].info["RSS_min_vol_per_atom"] = 1000.0
    with pytest.warns(FailedItemsWarning):
        result = optimize(ConfigSet(cells), OutputSpec(), EMT(), **QUICK)
    assert [failure.index for failure in result.failures] == [1]
    assert "RSS_min_vol_per_atom" in result.failures[0].reason


# --- arguments -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    ({"traj_subselect": "first"}, ValueError, "traj_subselect"),
    ({"traj_subselect": 3}, NotImplementedError, "traj_subselect"),
    ({"fmax": 0}, ValueError, "fmax"),
    ({"smax": -1.0}, ValueError, "smax"),
    ({"steps": 2.5}, ValueError, "steps"),
    ({"traj_step_interval": 0}, ValueError, "traj_step_interval"),
    ({"update_config_type": "prepend"}, ValueError, "update_config_type"),
    ({"pressure": ("gaussian", 1.0)}, ValueError, "gaussian"),
    ({"pressure": ("uniform", 0.0, 1.0)}, ValueError, "rng="),
    ({"pressure": 1.0, "stress_mask": [True, False]}, ValueError, "stress_mask"),
    ({"calculator": "EMT"}, TypeError, "calculator"),
])
def test_bad_arguments_are_refused_before_any_work(tmp_path, kwargs, error, match):
    kwargs = {"calculator": EMT(), **kwargs}
    with pytest.raises(error, match=match):
        optimize(ConfigSet(cu_cells(1)), OutputSpec(tmp_path / "out.xyz"), **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_stress_mask_without_pressure_warns():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimize(cu_cells(1), None, EMT(), stress_mask=[True] * 6, **QUICK)
    assert any("stress_mask" in str(warning.message) for warning in caught)


def test_optimizer_keywords_reach_the_optimizer(tmp_path):
    logfile = tmp_path / "opt.log"
    traj = list(optimize(cu_cells(1), OutputSpec(), EMT(), logfile=str(logfile), **QUICK))
    lines = logfile.read_text().splitlines()
    assert len([line for line in lines if line.startswith("PreconLBFGS:")]) == len(traj)


def counted_emt(log_path):
    """EMT, noting in ``log_path`` the process that built it (module level, so that it pickles)."""
    import os

    with open(log_path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return EMT()


def test_calculator_spec_is_built_once_per_worker(tmp_path):
    builds = tmp_path / "builds.txt"
    result = optimize(cu_cells(6), OutputSpec(), (counted_emt, [str(builds)], {}),
                      autopara_info={"num_python_subprocesses": 2, "num_inputs_per_python_subprocess": 1}, **QUICK)
    assert len({frame.info["idx"] for frame in result}) == 6
    pids = builds.read_text().split()
    assert 1 <= len(pids) <= 2 and len(set(pids)) == len(pids)


# --- the shared helpers it uses ----------------------------------------------------------

def test_check_pressure_reads_the_form_without_drawing():
    from wfl_like.utils.pressure import check_pressure

    assert check_pressure(1.5) is False
    assert check_pressure(("info", "p")) is False
    assert check_pressure(("uniform", 0.0, 1.0)) is True
    assert check_pressure(("normal_positive", 1.0, 0.1)) is True
    for bad in (("uniform", "a", 1.0), ("uniform", 0.0), ("info", 3), "1.0", ()):
        with pytest.raises(ValueError):
            check_pressure(bad)


def test_copy_with_results_clears_the_prefix_group_and_leaves_the_original():
    from wfl_like.utils.save_calc_results import at_copy_save_calc_results

    atoms = cu_cells(1)[0]
    atoms.info["last_op__md_energy"] = 1.0
    atoms.info["kept"] = 2
    atoms.calc = EMT()
    energy = atoms.get_potential_energy()
    copy = at_copy_save_calc_results(atoms, prefix=PREFIX)
    assert copy.calc is None and atoms.calc is not None
    assert copy.info[PREFIX + "energy"] == energy and copy.info["kept"] == 2
    assert "last_op__md_energy" not in copy.info and "last_op__md_energy" in atoms.info
    assert PREFIX + "forces" not in atoms.arrays


def test_save_calc_results_refuses_missing_properties_and_keeps_ase_names_in_a_calculator():
    from ase.calculators.calculator import PropertyNotPresent

    from wfl_like.utils.save_calc_results import save_calc_results

    atoms = cu_cells(1)[0]
    atoms.calc = EMT()
    atoms.get_potential_energy()
    with pytest.raises(PropertyNotPresent, match="dipole"):
        save_calc_results(atoms, prefix=PREFIX, properties=["energy", "dipole"])
    atoms.calc.results["model_extra"] = 1.0          # not an ASE property
    save_calc_results(atoms, prefix=None)
    assert "model_extra" not in atoms.calc.results and "energy" in atoms.calc.results
