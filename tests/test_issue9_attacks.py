"""Hostile but realistic uses of issue 9's operations: arguments that no structure could run
with must be refused before any work (not turn into one failed item per structure), and the
command line must report them as bad input (exit code 2, one line)."""

import subprocess
import sys

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from helpers import driver_env

from wfl_like import ConfigSet, OutputSpec
from wfl_like.generate.md import md
from wfl_like.generate.md.abort import AbortOnCollision, AbortOnLowEnergy
from wfl_like.generate.optimize import optimize
from wfl_like.utils.pressure import sample_pressure

TWO_WORKERS = {"num_python_subprocesses": 2}
EMT_SPEC = (EMT, (), {})


def cells(n=2):
    atoms = bulk("Cu", cubic=True)
    atoms.rattle(0.05, seed=1)
    return [atoms.copy() for _ in range(n)]


def relax(tmp_path, **kwargs):
    options = dict(steps=3, keep_symmetry=False, precon=None, autopara_info=TWO_WORKERS)
    return optimize(ConfigSet(cells()), OutputSpec(tmp_path / "relaxed.xyz"), EMT_SPEC, **{**options, **kwargs})


def run_md(tmp_path, **kwargs):
    options = dict(steps=3, dt=1.0, autopara_info=TWO_WORKERS)
    return md(ConfigSet(cells()), OutputSpec(tmp_path / "md.xyz"), EMT_SPEC, **{**options, **kwargs})


@pytest.mark.parametrize("pressure, words", [
    (float("nan"), "finite"),
    (float("inf"), "finite"),
    (("uniform", 0.0, float("nan")), "finite"),
    (("uniform", 2.0, 1.0), "lower bound"),
    (("normal_positive", 1.0, -1.0), "standard deviation"),
])
def test_relax_refuses_unusable_pressures_before_any_work(tmp_path, pressure, words):
    with pytest.raises(ValueError, match=words):
        relax(tmp_path, pressure=pressure, rng=np.random.default_rng(0))
    assert not (tmp_path / "relaxed.xyz").exists()


def test_sample_pressure_keeps_finite_forms():
    rng = np.random.default_rng(3)
    assert sample_pressure(-1.5) == -1.5
    assert 1.0 <= sample_pressure(("uniform", 1.0, 1.0), rng=rng) <= 1.0
    assert sample_pressure(("normal_positive", 2.0, 0.0), rng=rng) == 2.0


def test_relax_refuses_a_misspelt_optimizer_keyword(tmp_path):
    with pytest.raises(TypeError, match="fmx"):
        relax(tmp_path, fmx=0.1)
    assert not (tmp_path / "relaxed.xyz").exists()


def test_relax_passes_real_optimizer_keywords_on(tmp_path):
    result = relax(tmp_path, maxstep=0.05, use_armijo=True, traj_subselect="last")
    frames = list(result)
    assert len(frames) == 2 and all("last_op__optimize_energy" in frame.info for frame in frames)


@pytest.mark.parametrize("prefix, error", [("", ValueError), (3, TypeError)])
def test_relax_refuses_unusable_results_prefix_before_any_work(tmp_path, prefix, error):
    with pytest.raises(error, match="results_prefix"):
        relax(tmp_path, results_prefix=prefix)


def test_relax_refuses_a_stress_mask_that_is_not_booleans(tmp_path):
    with pytest.raises(ValueError, match="stress_mask"):
        relax(tmp_path, pressure=0.0, stress_mask=["x"] * 6)


def test_md_refuses_an_abort_class_instead_of_an_instance(tmp_path):
    # before: each trajectory ended at its first frame, marked MD_failed, and the call succeeded
    with pytest.raises(TypeError, match=r"AbortOnCollision\(\.\.\.\)"):
        run_md(tmp_path, abort_check=AbortOnCollision)


@pytest.mark.parametrize("make", [lambda: AbortOnLowEnergy(float("nan")),
                                  lambda: AbortOnCollision(float("inf"))])
def test_abort_conditions_refuse_values_that_never_compare(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("kwargs, words", [
    (dict(dt=float("inf")), "dt"),
    (dict(temperature=float("inf"), rng=np.random.default_rng(0)), "temperature"),
    (dict(temperature=[{"T_i": 300.0, "T_f": float("inf"), "traj_frac": 1.0}], temperature_tau=10.0,
          rng=np.random.default_rng(0)), "T_f"),
    (dict(temperature=300.0, temperature_tau=10.0, pressure=("uniform", 1.0), rng=np.random.default_rng(0)),
     "uniform"),
    (dict(temperature=300.0, temperature_tau=10.0, pressure=float("nan"), rng=np.random.default_rng(0)),
     "finite"),
])
def test_md_refuses_unusable_numbers_before_any_work(tmp_path, kwargs, words):
    with pytest.raises(ValueError, match=words):
        run_md(tmp_path, **kwargs)
    assert not (tmp_path / "md.xyz").exists()


def test_md_random_pressure_needs_rng(tmp_path):
    # NPH: no temperature, so only the pressure is random
    with pytest.raises(ValueError, match="rng="):
        run_md(tmp_path, integrator="LangevinBAOAB", pressure=("uniform", 0.0, 1.0), pressure_tau=50.0)


def test_md_random_pressure_is_the_same_whatever_the_workers(tmp_path):
    kwargs = dict(integrator="LangevinBAOAB", pressure=("uniform", 0.0, 1.0), pressure_tau=50.0, steps=2)
    two = run_md(tmp_path, rng=np.random.default_rng(5), **kwargs)
    serial = md(ConfigSet(cells()), OutputSpec(), EMT_SPEC, dt=1.0, rng=np.random.default_rng(5),
                autopara_info={"num_python_subprocesses": 0}, **kwargs)
    pressures = [frame.info["MD_pressure_GPa"] for frame in two]
    assert pressures == [frame.info["MD_pressure_GPa"] for frame in serial]
    assert len(set(pressures)) == 2


def run_cli(*args, cwd):
    env = driver_env(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "wfl_like.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", [
    ["md", "--steps", "2", "--dt", "1", "--results-prefix", ""],
    ["md", "--steps", "2", "--dt", "1", "--temperature", "300", "--temperature-tau", "10",
     "--integrator", "Langevin", "--pressure", "1"],
    ["relax", "--no-keep-symmetry", "--steps", "2", "--results-prefix", ""],
])
def test_cli_refusals_of_the_operation_are_bad_input(tmp_path, command):
    ase.io.write(tmp_path / "in.xyz", cells(), parallel=False)
    proc = run_cli(command[0], "in.xyz", "-o", "out.xyz", *command[1:], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("wfl-like: error:"), proc.stderr
    assert not (tmp_path / "out.xyz").exists()


class NaNAfterFirstCall(EMT):
    """EMT whose results turn to NaN after its first evaluation: a potential that breaks
    down once a relaxation or trajectory has started."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        super().calculate(atoms, properties, system_changes)
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls > 1:
            self.results = {name: np.full_like(np.asarray(value, dtype=float), np.nan)
                            for name, value in self.results.items()}

    def reset(self):
        super().reset()
        self.calls = 0


# the time limit only bounds the test where the hang is not fixed (ASE's line search
# loops forever on NaN); the reason asserted is not a timeout
NAN_AUTOPARA = {"num_python_subprocesses": 1, "timeout": 30}


def test_relax_with_nan_results_fails_the_structure_instead_of_hanging(tmp_path):
    with pytest.warns(UserWarning):
        result = optimize(ConfigSet(cells(1)), OutputSpec(tmp_path / "relaxed.xyz"), (NaNAfterFirstCall, (), {}),
                          steps=5, keep_symmetry=False, precon=None, autopara_info=NAN_AUTOPARA)
    assert list(result) == []
    [failure] = result.failures
    assert "NonFiniteResultError" in failure.reason and "non-finite" in failure.reason


def test_md_with_nan_forces_marks_the_trajectory_failed(tmp_path):
    result = md(ConfigSet(cells(1)), OutputSpec(tmp_path / "md.xyz"), (NaNAfterFirstCall, (), {}), steps=4,
                dt=1.0, autopara_info=NAN_AUTOPARA)
    frames = list(result)
    # the frame before the breakdown is kept, marked, and no NaN position is stored
    assert frames and "non-finite" in frames[-1].info["MD_failed"]
    assert all(np.isfinite(frame.positions).all() for frame in frames)


@pytest.mark.parametrize("n_gpus", ["abc", "0"])
def test_cli_unusable_gpu_setting_is_bad_input(tmp_path, n_gpus):
    ase.io.write(tmp_path / "in.xyz", cells(), parallel=False)
    env = driver_env(WFL_TORCH_N_GPUS=n_gpus)
    proc = subprocess.run([sys.executable, "-m", "wfl_like.cli", "calculate", "in.xyz", "-o", "out.xyz", "-n", "2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "WFL_TORCH_N_GPUS" in lines[0], proc.stderr


def test_md_refuses_a_ramp_whose_stages_all_round_to_no_step(tmp_path):
    # 20 stages over 10 steps: each rounds to 0 steps, and the run would stop at its first frame
    with pytest.raises(ValueError, match="0 steps"):
        run_md(tmp_path, steps=10, temperature=(300.0, 600.0, 20), temperature_tau=10.0, rng=np.random.default_rng(0))


def test_md_warns_when_rounding_changes_the_number_of_steps(tmp_path):
    with pytest.warns(UserWarning, match="runs 8 steps, not steps=10"):
        result = run_md(tmp_path, steps=10, temperature=(300.0, 600.0, 4), temperature_tau=10.0,
                        traj_step_interval=4, rng=np.random.default_rng(0))
    assert {frame.info["MD_step"] for frame in result} == {0, 4, 8}


@pytest.mark.parametrize("integrator", ["Langevin", "LangevinBAOAB"])
def test_md_says_a_thermostat_named_without_its_time_constant_is_not_used(tmp_path, integrator):
    # without temperature_tau there is no thermostat: the run is NVE, whatever integrator says
    with pytest.warns(UserWarning, match=r"\['integrator'\] not used by this run.*the run is NVE"):
        frames = run_md(tmp_path, integrator=integrator, temperature=300.0, rng=np.random.default_rng(1))
    assert frames


class CountingSelector:
    """A stateful frame selector: keeps every second frame it is shown."""

    def __init__(self):
        self.seen = 0

    def __call__(self, atoms):
        self.seen += 1
        return self.seen % 2 == 1


def test_a_stateful_frame_selector_gives_each_trajectory_the_same_frames_whatever_the_chunk(tmp_path):
    counts = {}
    for chunk in (1, 2):
        out = md(ConfigSet(cells(2)), OutputSpec(), (EMT, [], {}), steps=4, dt=1.0, traj_step_interval=1,
                 traj_select_during_func=CountingSelector(),
                 autopara_info={"num_inputs_per_python_subprocess": chunk})
        counts[chunk] = [[atoms.info["MD_step"] for atoms in group] for group in out.groups()]
    assert counts[1] == counts[2] == [[0, 2, 4], [0, 2, 4]]


def test_md_refuses_logger_keywords_the_logger_does_not_take_before_any_work(tmp_path):
    with pytest.raises(TypeError, match=r"logger_kwargs \['peratom_energy'\] do not fit logger MDLogger"):
        run_md(tmp_path, logger_interval=1, logger_kwargs={"peratom_energy": True})
    assert not (tmp_path / "md.xyz").exists()


def test_md_passes_logger_keywords_the_logger_takes(tmp_path):
    frames = run_md(tmp_path, logger_interval=1, logger_kwargs={"peratom": True, "logfile": str(tmp_path / "log")})
    assert frames and (tmp_path / "log.config_0").read_text()
