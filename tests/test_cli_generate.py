"""``wfl-like relax`` and ``wfl-like md``, run for real in subprocesses, against the
operations they call (``wfl_like.generate.optimize.optimize`` and ``wfl_like.generate.md.md``)."""

import importlib.util
import subprocess
import sys

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from helpers import assert_ok, assert_usage_error, driver_env

from wfl_like import ConfigSet, OutputSpec

RUN_TIMEOUT = 120
pytestmark = pytest.mark.timeout(3 * RUN_TIMEOUT + 60)


def run_cli(*args, cwd):
    # one BLAS thread: the cells are tiny, and threads fighting over few cores make the
    # variable-cell relaxation (scipy's expm_frechet) many times slower
    env = driver_env(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "wfl_like.cli"] + [str(a) for a in args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)


@pytest.fixture
def cells(tmp_path):
    """Three rattled 4-atom Cu cells in ``in.xyz``, ``info["idx"]``."""
    rng = np.random.default_rng(3)
    structures = []
    for i in range(3):
        atoms = bulk("Cu", "fcc", a=3.6 + 0.02 * i, cubic=True)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.info["idx"] = i
        structures.append(atoms)
    ase.io.write(tmp_path / "in.xyz", structures, parallel=False)
    return structures


def by_input(path):
    """The frames of a trajectory file, grouped by input (the first level of their location)."""
    groups = {}
    for atoms in ConfigSet(path):
        top = int(atoms.info["_ConfigSet_loc"].split(" / ")[1])
        groups.setdefault(top, []).append(atoms)
    return [groups[k] for k in sorted(groups)]


# --- relax --------------------------------------------------------------------------------------

def test_relax_last_converged_only_matches_the_api(tmp_path, cells):
    from wfl_like.generate.optimize import optimize

    proc = run_cli("relax", "in.xyz", "-o", "relaxed.xyz", "--fmax", "0.01", "--steps", "200",
                   "--no-keep-symmetry", "--last-converged-only", "-n", "2", cwd=tmp_path)
    assert_ok(proc)
    relaxed = ase.io.read(tmp_path / "relaxed.xyz", ":", parallel=False)
    assert [at.info["idx"] for at in relaxed] == [0, 1, 2]
    for atoms in relaxed:
        assert atoms.info["optimize_config_type"] == "optimize_last_converged"
        assert np.linalg.norm(atoms.arrays["last_op__optimize_forces"], axis=1).max() < 0.01
    direct = optimize(ConfigSet(tmp_path / "in.xyz"), OutputSpec(), EMT(), fmax=0.01, steps=200,
                      keep_symmetry=False, traj_subselect="last_converged",
                      autopara_info={"num_python_subprocesses": 0})
    for atoms, expected in zip(relaxed, direct):
        np.testing.assert_allclose(atoms.positions, expected.positions, atol=1e-6)


def test_relax_writes_one_trajectory_per_input(tmp_path, cells):
    proc = run_cli("relax", "in.xyz", "-o", "traj.xyz", "--fmax", "0.05", "--steps", "30",
                   "--no-keep-symmetry", "--traj-step-interval", "5", "--results-prefix", "emt_",
                   "--chunk-size", "2", cwd=tmp_path)
    assert_ok(proc)
    trajectories = by_input(tmp_path / "traj.xyz")
    assert len(trajectories) == 3
    for i, traj in enumerate(trajectories):
        assert all(at.info["idx"] == i for at in traj)
        assert traj[0].info["optimize_config_type"] == "optimize_initial"
        assert traj[-1].info["optimize_config_type"].startswith("optimize_last_")
        assert all("emt_energy" in at.info for at in traj)


def test_relax_under_pressure_changes_the_cell(tmp_path, cells):
    proc = run_cli("relax", "in.xyz", "-o", "out.xyz", "--fmax", "0.1", "--steps", "3", "--pressure", "5",
                   "--no-keep-symmetry", "--traj-step-interval", "100", cwd=tmp_path)
    assert_ok(proc)
    trajectories = by_input(tmp_path / "out.xyz")
    assert len(trajectories) == 3
    # the cell relaxes too: each trajectory ends in another cell than it started from
    for traj, original in zip(trajectories, cells):
        np.testing.assert_allclose(traj[0].cell, original.cell, atol=1e-6)
        assert not np.allclose(traj[-1].cell, original.cell, atol=1e-4)
        assert traj[-1].info["optimize_pressure_GPa"] == 5


@pytest.mark.parametrize("args, words", [
    (["--fmax", "-1"], ["--fmax"]),
    (["--steps", "0"], ["--steps"]),
    (["-c", "collections:OrderedDict"], ["OrderedDict"]),
])
def test_relax_bad_options_are_one_line_exit_2(tmp_path, cells, args, words):
    assert_usage_error(run_cli("relax", "in.xyz", "-o", "out.xyz", *args, cwd=tmp_path), *words)
    assert not (tmp_path / "out.xyz").exists()


def test_relax_keeping_symmetry_needs_spglib(tmp_path, cells):
    proc = run_cli("relax", "in.xyz", "-o", "out.xyz", "--steps", "2", cwd=tmp_path)
    if importlib.util.find_spec("spglib") is None:
        assert_usage_error(proc, "spglib", "--no-keep-symmetry")
    else:
        assert_ok(proc)


def test_relax_failed_structure_is_skipped_or_fails_the_run(tmp_path, cells):
    # EMT has no parameters for Ar: that relaxation raises, a failed item of the run
    bad = cells[:2] + [bulk("Ar", "fcc", a=5.3, cubic=True)]
    ase.io.write(tmp_path / "mixed.xyz", bad, parallel=False)
    common = ["relax", "mixed.xyz", "--fmax", "0.05", "--steps", "20", "--no-keep-symmetry",
              "--last-converged-only", "-n", "2"]
    failed = run_cli(*common, "-o", "raise.xyz", "--errors", "raise", cwd=tmp_path)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert not (tmp_path / "raise.xyz").exists()
    skipped = run_cli(*common, "-o", "skip.xyz", cwd=tmp_path)       # skip: relax's default, as in wfl
    assert_ok(skipped)
    assert [at.info["idx"] for at in ase.io.read(tmp_path / "skip.xyz", ":", parallel=False)] == [0, 1]
    assert "Ar" in skipped.stderr or "failed" in skipped.stderr


# --- md ----------------------------------------------------------------------------------------------

MD_ARGS = ["--steps", "10", "--dt", "1", "--temperature", "300", "--temperature-tau", "20",
           "--integrator", "Langevin", "--traj-step-interval", "5"]


def test_md_trajectories_are_the_same_whatever_the_processes_and_chunks(tmp_path, cells):
    serial = run_cli("md", "in.xyz", "-o", "serial.xyz", *MD_ARGS, cwd=tmp_path)
    assert_ok(serial)
    assert "seed 0" in serial.stderr
    parallel = run_cli("md", "in.xyz", "-o", "parallel.xyz", *MD_ARGS, "-n", "2", "--chunk-size", "1",
                       cwd=tmp_path)
    assert_ok(parallel)
    assert (tmp_path / "serial.xyz").read_bytes() == (tmp_path / "parallel.xyz").read_bytes()
    trajectories = by_input(tmp_path / "serial.xyz")
    assert len(trajectories) == 3
    for traj in trajectories:
        assert [at.info["MD_step"] for at in traj] == [0, 5, 10]
        np.testing.assert_allclose([at.info["MD_time_fs"] for at in traj], [0, 5, 10])
        assert all("last_op__md_energy" in at.info for at in traj)
    # another seed, other velocities and noise
    other = run_cli("md", "in.xyz", "-o", "other.xyz", *MD_ARGS, "--seed", "7", cwd=tmp_path)
    assert_ok(other)
    assert "seed 7" in other.stderr
    first = ase.io.read(tmp_path / "serial.xyz", ":", parallel=False)
    second = ase.io.read(tmp_path / "other.xyz", ":", parallel=False)
    assert len(first) == len(second)
    assert not np.allclose(first[-1].positions, second[-1].positions)


def test_md_matches_the_api_with_the_same_seed(tmp_path, cells):
    from wfl_like.generate.md import md

    assert_ok(run_cli("md", "in.xyz", "-o", "cli.xyz", *MD_ARGS, "--seed", "11", cwd=tmp_path))
    api = md(ConfigSet(tmp_path / "in.xyz"), OutputSpec(tmp_path / "api.xyz"), (EMT, [], {}), steps=10, dt=1,
             temperature=300, temperature_tau=20, integrator="Langevin", traj_step_interval=5,
             rng=np.random.default_rng(11), autopara_info={"num_python_subprocesses": 0})
    cli = ase.io.read(tmp_path / "cli.xyz", ":", parallel=False)
    assert len(cli) == len(list(api))
    for a, b in zip(cli, api):
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-8)


def test_md_without_temperature_is_nve(tmp_path, cells):
    proc = run_cli("md", "in.xyz", "-o", "nve.xyz", "--steps", "2", "--dt", "1", cwd=tmp_path)
    assert_ok(proc)
    assert all("MD_temperature_K" not in at.info or at.info["MD_temperature_K"] is None
               for at in ase.io.read(tmp_path / "nve.xyz", ":", parallel=False))


def test_md_temperature_without_tau_is_said(tmp_path, cells):
    proc = run_cli("md", "in.xyz", "-o", "out.xyz", "--steps", "2", "--dt", "1", "--temperature", "300",
                   cwd=tmp_path)
    assert_ok(proc)
    assert "--temperature-tau" in proc.stderr and "NVE" in proc.stderr


@pytest.mark.parametrize("args, words", [
    (["--dt", "1"], ["--steps"]),
    (["--steps", "5", "--dt", "0"], ["--dt"]),
    (["--steps", "5", "--dt", "1", "--integrator", "Langevin"], ["--temperature"]),
    (["--steps", "5", "--dt", "1", "--temperature-tau", "10"], ["--temperature"]),
    (["--steps", "5", "--dt", "1", "--temperature", "300", "--pressure", "1"], ["--temperature-tau"]),
    (["--steps", "5", "--dt", "1", "-k", "nonsense"], ["nonsense"]),
])
def test_md_bad_options_are_one_line_exit_2(tmp_path, cells, args, words):
    assert_usage_error(run_cli("md", "in.xyz", "-o", "out.xyz", *args, cwd=tmp_path), *words)
    assert not (tmp_path / "out.xyz").exists()


def test_md_existing_output_is_reused(tmp_path, cells):
    assert_ok(run_cli("md", "in.xyz", "-o", "out.xyz", "--steps", "4", "--dt", "1", cwd=tmp_path))
    first = (tmp_path / "out.xyz").stat().st_mtime_ns
    assert_ok(run_cli("md", "in.xyz", "-o", "out.xyz", "--steps", "4", "--dt", "1", cwd=tmp_path))
    assert (tmp_path / "out.xyz").stat().st_mtime_ns == first
