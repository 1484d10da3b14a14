"""wfl_like.generate.md: frames, integrators, temperature stages, refused settings, per-structure
overrides, abort checks, failures, logs."""

import json

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.eos import EquationOfState
from ase.units import GPa

from wfl_like import ConfigSet, OutputSpec
from wfl_like.errors import AutoparallelizeError, FailedItemsWarning
from wfl_like.generate.md import md
from wfl_like.generate.md import stages
from wfl_like.generate.md.abort import AbortOnCollision, AbortOnLowEnergy
from wfl_like.generate.md.abort_base import AbortBase
from wfl_like.generate.md.trajectory import estimate_compressibility

EMT_SPEC = (EMT, [], {})
TWO_WORKERS = {"num_python_subprocesses": 2}


def cu_cell(seed=0, repeat=(2, 1, 1)):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * repeat
    atoms.rattle(stdev=0.02, seed=seed)
    atoms.info["config_type"] = "cu"
    return atoms


class FailingEMT(EMT):
    """EMT that raises once a structure labelled ``fail_from_step`` reaches that MD step."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=("positions",)):
        fail_from = atoms.info.get("fail_from_step")
        if fail_from is not None and atoms.info.get("MD_step", 0) >= fail_from:
            raise RuntimeError(f"potential gave up at step {atoms.info.get('MD_step')}")
        super().calculate(atoms, properties, system_changes)


def test_frames_every_interval_and_the_last_with_state_results_and_momenta(tmp_path):
    inputs = [cu_cell(0), cu_cell(1)]
    inputs[0].info["last_op__optimize_energy"] = -1.0      # an earlier operation's result
    result = md(ConfigSet(inputs), OutputSpec("md.xyz", file_root=tmp_path), EMT_SPEC, steps=25, dt=2.0,
                temperature=300.0, traj_step_interval=10, rng=np.random.default_rng(5))
    groups = [list(group) for group in result.groups()]
    assert [len(group) for group in groups] == [4, 4]        # one trajectory per input
    frames = ase.io.read(tmp_path / "md.xyz", ":", parallel=False)
    first = frames[:4]
    assert [f.info["MD_step"] for f in first] == [0, 10, 20, 25]
    assert [f.info["MD_time_fs"] for f in first] == [0.0, 20.0, 40.0, 50.0]
    assert first[0].info["MD_current_temperature"] == pytest.approx(300.0)
    assert all(f.info["config_type"] == "cu:MD" for f in frames)
    assert all("last_op__md_energy" in f.info and "last_op__md_forces" in f.arrays for f in frames)
    assert "last_op__optimize_energy" not in first[0].info      # the common prefix keeps only the last op's
    assert np.abs(first[-1].get_velocities()).max() > 0          # momenta travel through the file
    assert "MD_temperature_K" not in first[0].info             # NVE: no thermostat target


@pytest.mark.parametrize("integrator, pressure, hydrostatic", [
    ("Berendsen", None, True), ("Langevin", None, True), ("LangevinBAOAB", None, True),
    ("Berendsen", 0.0, True), ("LangevinBAOAB", 1.0, False)])
def test_each_integrator_runs_its_ensemble(integrator, pressure, hydrostatic):
    result = md(ConfigSet(cu_cell()), OutputSpec(), EMT_SPEC, steps=20, dt=2.0, integrator=integrator,
                temperature=500.0, temperature_tau=50.0, pressure=pressure, hydrostatic=hydrostatic,
                pressure_tau=None if pressure is None else 100.0, rng=np.random.default_rng(2))
    frames = list(result)
    assert len(frames) == 21
    assert all(f.info["MD_temperature_K"] == 500.0 for f in frames)
    first, last = frames[0].cell.array, frames[-1].cell.array
    if pressure is None:
        assert np.array_equal(first, last)
    else:
        assert frames[-1].info["MD_pressure_GPa"] == pressure
        assert not np.allclose(first, last)
        ratios = np.diag(last) / np.diag(first)
        assert np.allclose(ratios, ratios[0]) == hydrostatic     # volume rescaling keeps the shape


def test_temperature_schedules_as_segments():
    assert stages.segments(300.0, 100) == [(300.0, 100)]
    assert stages.segments((500.0, 100.0, 5), 100) == [(T, 20) for T in (500.0, 400.0, 300.0, 200.0, 100.0)]
    assert stages.segments([{"T_i": 100.0, "T_f": 100.0, "traj_frac": 0.5},
                            {"T_i": 100.0, "T_f": 300.0, "traj_frac": 0.5, "n_stages": 2}], 40) == \
        [(100.0, 20), (100.0, 10), (300.0, 10)]
    with pytest.raises(ValueError, match="unknown keys"):
        stages.segments([{"T_i": 1, "T_f": 2, "traj_frac": 1, "steps": 3}], 10)


def test_a_ramp_sets_the_thermostat_target_of_each_frame():
    result = md(ConfigSet(cu_cell()), OutputSpec(), EMT_SPEC, steps=12, dt=2.0, temperature=(600.0, 200.0, 3),
                temperature_tau=20.0, traj_step_interval=4, rng=np.random.default_rng(3))
    assert [(f.info["MD_step"], f.info["MD_temperature_K"]) for f in result] == \
        [(0, 600.0), (4, 600.0), (8, 400.0), (12, 200.0)]


def test_segments_rounded_to_no_steps_record_no_frame_twice():
    schedule = [{"T_i": 900.0, "T_f": 900.0, "traj_frac": 0.01}, {"T_i": 300.0, "T_f": 300.0, "traj_frac": 1.0}]
    frames = list(md(ConfigSet(cu_cell()), OutputSpec(), EMT_SPEC, steps=4, dt=1.0, temperature=schedule,
                     temperature_tau=20.0, rng=np.random.default_rng(3)))
    assert [f.info["MD_step"] for f in frames] == [0, 1, 2, 3, 4]
    assert frames[0].info["MD_current_temperature"] == pytest.approx(900.0)     # drawn at the first T_i
    assert frames[-1].info["MD_temperature_K"] == 300.0


@pytest.mark.parametrize("kwargs, message", [
    ({"integrator": "Langevin", "temperature": 300.0, "temperature_tau": 50.0, "pressure": 0.0}, "constant volume"),
    ({"temperature": 300.0, "temperature_tau": 50.0, "pressure": 0.0, "hydrostatic": False}, "hydrostatic"),
    ({"temperature": 300.0, "pressure": 0.0}, "NPH"),
    ({"temperature_tau": 50.0}, "no temperature"),
    ({"temperature": (300.0, 100.0)}, "without a thermostat"),
    ({"integrator": "Verlet"}, "unknown integrator"),
    ({"integrator": "LangevinBAOAB", "pressure": 0.0}, "pressure_tau"),
    ({"temperature": [{"T_i": 300.0, "T_f": 100.0}], "temperature_tau": 50.0}, "traj_frac"),
    ({"traj_step_interval": 0}, "traj_step_interval"),
    ({"temperature": 300.0}, "rng="),
])
def test_settings_no_run_can_have_are_refused_before_any_work(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        md(ConfigSet(cu_cell()), OutputSpec("md.xyz", file_root=tmp_path), EMT_SPEC, steps=5, dt=1.0, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_an_option_the_run_cannot_use_is_named_in_a_warning():
    with pytest.warns(UserWarning, match="pressure_tau"):
        md(ConfigSet(cu_cell()), OutputSpec(), EMT_SPEC, steps=2, dt=1.0, pressure_tau=100.0)


def test_without_temperature_no_rng_is_needed_and_the_structure_starts_at_rest():
    frames = list(md(ConfigSet(cu_cell()), OutputSpec(), EMT_SPEC, steps=3, dt=1.0))
    assert frames[0].info["MD_current_temperature"] == 0.0
    assert frames[-1].info["MD_current_temperature"] > 0.0     # the rattled atoms start to move


def test_per_structure_overrides_from_json_or_dict_and_unknown_keys_fail_that_structure():
    inputs = [cu_cell(0), cu_cell(1), cu_cell(2), cu_cell(3)]
    inputs[1].info["WFL_MD_KWARGS"] = json.dumps({"temperature": 700.0, "integrator": "Langevin"})
    inputs[2].info["WFL_MD_KWARGS"] = {"traj_step_interval": 5}
    inputs[3].info["WFL_MD_KWARGS"] = json.dumps({"steps": 3})
    result = md(ConfigSet(inputs), OutputSpec(), EMT_SPEC, steps=10, dt=1.0, temperature=300.0, temperature_tau=20.0,
                rng=np.random.default_rng(4), autopara_info={**TWO_WORKERS, "errors": "skip"})
    groups = [list(group) for group in result.groups()]
    assert [len(group) for group in groups] == [11, 11, 3]
    assert {f.info["MD_temperature_K"] for f in groups[0]} == {300.0}
    assert {f.info["MD_temperature_K"] for f in groups[1]} == {700.0}
    assert [failure.index for failure in result.failures] == [3]
    assert "'steps'" in result.failures[0].reason and "cannot be set per structure" in result.failures[0].reason


class ScriptedCheck(AbortBase):
    """Says ok or not from a script, one answer per check."""

    def __init__(self, answers, n_failed_steps):
        super().__init__(n_failed_steps)
        self.answers = list(answers)

    def atoms_ok(self, atoms):
        return self.answers[len(self.ok_history)]


def test_abort_base_stops_once_the_last_n_checks_all_failed():
    check = ScriptedCheck([False, True, False, False, True], n_failed_steps=2)
    assert [check.stop(None) for _ in range(4)] == [False, False, False, True]
    with pytest.raises(ValueError, match="n_failed_steps"):
        ScriptedCheck([], n_failed_steps=0)


def test_abort_on_low_energy_compares_with_the_first_frame():
    atoms = cu_cell()
    atoms.calc = EMT()
    check = AbortOnLowEnergy(0.01)
    assert check.stop(atoms) is False
    atoms.positions *= 1.0      # same energy: still ok
    assert check.stop(atoms) is False
    check.initial_E_per_atom += 0.02
    assert check.stop(atoms) is True


@pytest.mark.parametrize("autopara_info", [None, TWO_WORKERS])
def test_a_collision_stops_the_trajectory_and_marks_its_last_frame(autopara_info):
    # every Cu pair of the fcc cell is at 2.55 A: a 3 A radius sees collisions at once
    stopper = AbortOnCollision(collision_radius=3.0, n_failed_steps=2)
    result = md(ConfigSet([cu_cell(0), cu_cell(1)]), OutputSpec(), EMT_SPEC, steps=50, dt=1.0, abort_check=stopper,
                traj_step_interval=5, autopara_info=autopara_info)
    for group in result.groups():
        frames = list(group)
        assert [f.info["MD_step"] for f in frames] == [0, 5]
        assert frames[-1].info["MD_aborted_by"] == "AbortOnCollision"
        assert "MD_aborted_by" not in frames[0].info
    assert stopper.ok_history == []      # each trajectory checked its own copy


def failing_second_of_three():
    inputs = [cu_cell(0), cu_cell(1), cu_cell(2)]
    inputs[1].info["fail_from_step"] = 4
    return inputs


MD_TO_FAIL = {"steps": 8, "dt": 1.0, "temperature": 300.0, "traj_step_interval": 2}
CHUNKS_OF_3 = {**TWO_WORKERS, "num_inputs_per_python_subprocess": 3}


def test_with_skip_failures_a_failing_dynamics_keeps_its_frames_before_the_failure():
    result = md(ConfigSet(failing_second_of_three()), OutputSpec(), (FailingEMT, [], {}), **MD_TO_FAIL,
                rng=np.random.default_rng(6), autopara_info=CHUNKS_OF_3)
    groups = [list(group) for group in result.groups()]
    assert [len(group) for group in groups] == [5, 3, 5]      # steps 0, 2, 4; step 5 failed
    assert groups[1][-1].info["MD_failed"].startswith("RuntimeError: potential gave up at step 4")
    assert result.failures == []


def test_without_skip_failures_only_the_failing_structure_fails_and_the_call_raises_after_the_others(tmp_path):
    with pytest.raises(AutoparallelizeError, match="potential gave up") as raised:
        md(ConfigSet(failing_second_of_three()), OutputSpec("md.xyz", file_root=tmp_path), (FailingEMT, [], {}),
           **MD_TO_FAIL, skip_failures=False, rng=np.random.default_rng(6), autopara_info=CHUNKS_OF_3)
    assert [failure.index for failure in raised.value.failures] == [1]
    result = md(ConfigSet(failing_second_of_three()), OutputSpec(), (FailingEMT, [], {}), **MD_TO_FAIL,
                skip_failures=False, rng=np.random.default_rng(6), autopara_info={**CHUNKS_OF_3, "errors": "skip"})
    assert [len(list(group)) for group in result.groups()] == [5, 5]
    assert [failure.index for failure in result.failures] == [1]


def test_a_failure_before_the_first_frame_leaves_the_structure_out_with_a_record():
    inputs = [cu_cell(0), cu_cell(1)]
    inputs[0].info["fail_from_step"] = 0
    with pytest.warns(FailedItemsWarning):
        result = md(ConfigSet(inputs), OutputSpec(), (FailingEMT, [], {}), steps=3, dt=1.0)
    assert [failure.index for failure in result.failures] == [0]
    assert len(list(result)) == 4


def test_frames_selected_during_and_after_the_run():
    def every_other_recorded(atoms):
        return atoms.info["MD_step"] % 4 == 0

    def last_two(frames):
        return frames[-2:]

    frames = list(md(ConfigSet(cu_cell()), OutputSpec(), EMT_SPEC, steps=10, dt=1.0, traj_step_interval=2,
                     traj_select_during_func=every_other_recorded, traj_select_after_func=last_two))
    assert [f.info["MD_step"] for f in frames] == [4, 8]


def test_logs_one_file_per_structure_or_prefixed_lines_on_stdout(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    md(ConfigSet([cu_cell(0), cu_cell(1)]), OutputSpec(), EMT_SPEC, steps=10, dt=1.0, logger_interval=5,
       logger_kwargs={"logfile": "run.log"}, autopara_info=TWO_WORKERS)
    for item in (0, 1):
        lines = (tmp_path / f"run.log.config_{item}").read_text().splitlines()
        assert lines[0].split()[0] == "Time[ps]" and len(lines) == 1 + 3     # header, steps 0, 5, 10
    md(ConfigSet([cu_cell(0), cu_cell(1)]), OutputSpec(), EMT_SPEC, steps=10, dt=1.0, logger_interval=5)
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("config 0 ") for line in lines) == 4
    assert sum(line.startswith("config 1 ") for line in lines) == 4


def test_the_compressibility_estimate_is_the_inverse_bulk_modulus():
    atoms = bulk("Cu", "fcc", a=3.59, cubic=True)
    atoms.calc = EMT()
    volumes, energies = [], []
    for factor in np.linspace(0.99, 1.01, 7):
        strained = atoms.copy()
        strained.calc = EMT()
        strained.set_cell(atoms.cell * factor, scale_atoms=True)
        volumes.append(strained.get_volume())
        energies.append(strained.get_potential_energy())
    bulk_modulus = EquationOfState(volumes, energies).fit()[2]
    assert estimate_compressibility(atoms, 0.005) == pytest.approx(1 / bulk_modulus, rel=0.03)
    assert 100 < bulk_modulus / GPa < 200
