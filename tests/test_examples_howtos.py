"""The how-to examples run as a user runs them, on a few structures, and show what their pages say.

- scatter_gather.py: the two evaluations made at once (futures) write what they write one after
  the other, and the printed statistics are those of the output files.
- ml_potential.py: two workers with ``WFL_TORCH_N_GPUS=2`` give the serial run's energies and
  forces, each worker loads the model once and sees a device of its own; the forces are the
  gradient of the energy.
"""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.calculators.emt import EMT

from helpers import driver_env

pytestmark = pytest.mark.timeout(300)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
STRUCTURES = 12
GROUPS = 3
SCATTER_ARGS = ("--structures", str(STRUCTURES), "--groups", str(GROUPS))
ML_ARGS = ("--structures", "8", "--chunk-size", "2")


def run_example(name, *args, cwd, env=None):
    return subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=cwd, env=env or driver_env(),
                          capture_output=True, text=True, timeout=300)


def ok(done):
    assert done.returncode == 0, done.stderr
    return done


def files_under(workdir, *folders):
    """``{relative path: bytes}`` of the output files and the summary (journals and manifests left out)."""
    found = {path.relative_to(workdir).as_posix(): path.read_bytes()
             for folder in folders for path in sorted((workdir / folder).glob("*.xyz"))}
    found["summary.txt"] = (workdir / "summary.txt").read_bytes()
    return found


@pytest.fixture(scope="module")
def concurrent_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("concurrent")
    done = ok(run_example("scatter_gather.py", "-n", "2", "--workdir", str(workdir), *SCATTER_ARGS, cwd=workdir))
    return workdir, done.stdout


def test_scatter_gather_futures_write_what_sequential_calls_write(concurrent_run, tmp_path):
    workdir, stdout = concurrent_run
    done = ok(run_example("scatter_gather.py", "-n", "2", "--sequential", "--workdir", str(tmp_path),
                          *SCATTER_ARGS, cwd=tmp_path))
    assert done.stdout == stdout
    concurrent, sequential = files_under(workdir, "EMT", "LJ"), files_under(tmp_path, "EMT", "LJ")
    assert sorted(concurrent) == sorted([f"{name}/group_{k}.xyz" for name in ("EMT", "LJ") for k in range(GROUPS)]
                                        + ["summary.txt"])
    assert concurrent == sequential


def test_scatter_gather_splits_by_volume_and_keeps_every_structure(concurrent_run):
    workdir, _ = concurrent_run
    groups = [ase.io.read(workdir / "pieces" / f"group_{k}.xyz", ":") for k in range(GROUPS)]
    ids = sorted(int(atoms.info["structure_id"]) for group in groups for atoms in group)
    assert ids == list(range(STRUCTURES))
    volumes = [[atoms.get_volume() / len(atoms) for atoms in group] for group in groups]
    assert all(max(smaller) <= min(larger) for smaller, larger in zip(volumes, volumes[1:]))
    for k, group in enumerate(groups):
        assert {int(atoms.info["group"]) for atoms in group} == {k}


def test_scatter_gather_reports_the_statistics_of_its_outputs(concurrent_run):
    workdir, stdout = concurrent_run
    lines = stdout.splitlines()
    assert lines[0].startswith(f"{STRUCTURES} structures in {GROUPS} groups")
    rows = [line.split() for line in lines[2:2 + GROUPS]]
    for k, row in enumerate(rows):
        frames = ase.io.read(workdir / "EMT" / f"group_{k}.xyz", ":")
        per_atom = np.array([atoms.info["EMT_energy"] / len(atoms) for atoms in frames])
        # what the gathered file holds is EMT's energy of the scattered piece
        piece = ase.io.read(workdir / "pieces" / f"group_{k}.xyz", ":")
        assert np.allclose(per_atom, [EMT().get_potential_energy(atoms) / len(atoms) for atoms in piece])
        max_force = max(np.linalg.norm(atoms.arrays["EMT_forces"], axis=1).max() for atoms in frames)
        assert int(row[0]) == k and int(row[1]) == len(frames)
        assert float(row[2]) == pytest.approx(per_atom.mean(), abs=1e-5)
        assert float(row[3].strip("()")) == pytest.approx(per_atom.std(), abs=1e-5)
        assert float(row[4]) == pytest.approx(max_force, abs=1e-4)
    counts = [int(re.match(r"\s+\[.*\)\s+(\d+)", line).group(1)) for line in lines[3 + GROUPS:]]
    assert len(counts) == 8 and sum(counts) == STRUCTURES


def gpus_the_driver_may_hand_out():
    """How many GPUs ``WFL_TORCH_N_GPUS`` may name here: unbounded without an NVIDIA driver."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return len(list(gpus.iterdir())) if gpus.is_dir() else None


@pytest.fixture(scope="module")
def serial_ml(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("serial_ml")
    done = ok(run_example("ml_potential.py", "-n", "0", "--workdir", str(workdir), *ML_ARGS, cwd=workdir))
    return ase.io.read(workdir / "ml.xyz", ":"), done.stdout


def test_ml_potential_serial_run_loads_the_model_once_in_the_driver(serial_ml):
    frames, stdout = serial_ml
    assert len(frames) == 8
    assert {int(atoms.info["ml_worker"]) for atoms in frames} == {-1}
    assert {int(atoms.info["ml_models_loaded"]) for atoms in frames} == {1}
    assert "driver (serial): CUDA_VISIBLE_DEVICES" in stdout and "model loaded 1 time(s), 8 structures" in stdout


def test_ml_potential_two_workers_one_device_each_give_the_serial_values(serial_ml, tmp_path):
    n_gpus = gpus_the_driver_may_hand_out()
    if n_gpus is not None and n_gpus < 2:
        pytest.skip(f"WFL_TORCH_N_GPUS=2 is refused on a machine with {n_gpus} GPU")
    env = driver_env(WFL_TORCH_N_GPUS="2")
    env.pop("CUDA_VISIBLE_DEVICES", None)     # so that the devices handed out are 0 and 1
    done = ok(run_example("ml_potential.py", "-n", "2", "--meet", "--workdir", str(tmp_path), *ML_ARGS,
                          cwd=tmp_path, env=env))
    frames = ase.io.read(tmp_path / "ml.xyz", ":")
    serial, _ = serial_ml
    assert [atoms.info["MLP_energy"] for atoms in frames] == [atoms.info["MLP_energy"] for atoms in serial]
    for atoms, alone in zip(frames, serial):
        assert np.array_equal(atoms.arrays["MLP_forces"], alone.arrays["MLP_forces"])
    by_worker = {}
    for atoms in frames:
        by_worker.setdefault(int(atoms.info["ml_worker"]), set()).add(
            (int(atoms.info["ml_pid"]), str(atoms.info["ml_cuda_visible_devices"]),
             int(atoms.info["ml_models_loaded"])))
    assert sorted(by_worker) == [0, 1]
    for worker, seen in by_worker.items():
        # one process per worker, which loaded the model once and saw a device of its own
        assert len(seen) == 1, seen
        ((_, visible, loads),) = seen
        assert visible == str(worker) and loads == 1
    assert "worker 0: CUDA_VISIBLE_DEVICES=0, model loaded 1 time(s)" in done.stdout
    assert "worker 1: CUDA_VISIBLE_DEVICES=1, model loaded 1 time(s)" in done.stdout


def test_ml_potential_spawned_workers_load_the_model_once(tmp_path):
    n_gpus = gpus_the_driver_may_hand_out()
    if n_gpus is not None and n_gpus < 2:
        pytest.skip(f"WFL_TORCH_N_GPUS=2 is refused on a machine with {n_gpus} GPU")
    env = driver_env(WFL_TORCH_N_GPUS="2", WFL_LIKE_START_METHOD="spawn")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    ok(run_example("ml_potential.py", "-n", "2", "--meet", "--workdir", str(tmp_path), *ML_ARGS, cwd=tmp_path,
                   env=env))
    frames = ase.io.read(tmp_path / "ml.xyz", ":")
    assert {int(atoms.info["ml_worker"]) for atoms in frames} == {0, 1}
    assert {int(atoms.info["ml_models_loaded"]) for atoms in frames} == {1}


def test_ml_potential_forces_are_the_gradient_of_its_energy(tmp_path):
    from ase.calculators.fd import calculate_numerical_forces

    spec = importlib.util.spec_from_file_location("ml_potential_example", EXAMPLES / "ml_potential.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.write_weights(tmp_path / "weights.json")
    atoms = ase.io.read(EXAMPLES / "data" / "cu_rattled.xyz", 3)
    atoms.calc = example.NumpyMLPotential(str(tmp_path / "weights.json"))
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 0.1
    assert np.allclose(forces, calculate_numerical_forces(atoms, eps=1e-5), atol=1e-6)
    assert np.allclose(forces.sum(axis=0), 0.0, atol=1e-10)       # no net force: translation invariant
    # the weights file is the same bytes every time, so a rerun's journal reuses the results
    example.write_weights(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "weights.json").read_bytes()
