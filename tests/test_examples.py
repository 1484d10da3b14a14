"""Every example script runs, on the bundled data, as a user would run it.

The relax -> MD -> calculate pipeline also gives the same outputs serially and with two
workers, and when killed during its MD step and run again.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import ase.io
import pytest

from helpers import driver_env, end_process_group, wait_for

# the pipeline relaxes and runs MD, three times
pytestmark = pytest.mark.timeout(600)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PIPELINE_OUTPUTS = ("relaxed.xyz", "md.xyz", "md_lj.xyz")


# A fifth of the example's structures, and half its MD: frames at steps 0, 50 and 100
STRUCTURES = 8
SMALLER = ("--structures", str(STRUCTURES), "--md-steps", "100")
FRAMES_PER_STRUCTURE = 3


def run_example(name, *args, cwd):
    return subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=cwd, env=driver_env(),
                          capture_output=True, text=True, timeout=600)


def test_wrap_an_operation_example_runs(tmp_path):
    (tmp_path / "examples" / "data").mkdir(parents=True)
    (tmp_path / "examples" / "data" / "cu_rattled.xyz").write_bytes((EXAMPLES / "data" / "cu_rattled.xyz").read_bytes())
    done = run_example("wrap_an_operation.py", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "rattled.xyz").is_file()
    energies = done.stdout.strip().strip("[]").split(",")
    assert len(energies) == 3 and all(float(e) for e in energies)


def outputs_of(workdir):
    return {name: (workdir / name).read_bytes() for name in PIPELINE_OUTPUTS}


@pytest.fixture(scope="module")
def serial_pipeline(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("serial")
    done = run_example("relax_md_calculate.py", "-n", "0", "--workdir", str(workdir), *SMALLER, cwd=workdir)
    assert done.returncode == 0, done.stderr
    return workdir, done.stdout


def test_pipeline_example_writes_its_three_steps(serial_pipeline):
    workdir, stdout = serial_pipeline
    assert stdout.startswith(f"{STRUCTURES * FRAMES_PER_STRUCTURE} MD frames; LJ - EMT energy per atom"), stdout
    relaxed = ase.io.read(workdir / "relaxed.xyz", ":")
    frames = ase.io.read(workdir / "md_lj.xyz", ":")
    assert len(relaxed) == STRUCTURES
    assert all(atoms.info["config_type"] == "rattled_fcc:optimize_last_converged" for atoms in relaxed)
    assert len(frames) == STRUCTURES * FRAMES_PER_STRUCTURE
    assert all("LJ_energy" in atoms.info and "last_op__md_energy" in atoms.info for atoms in frames)
    assert {atoms.info["MD_temperature_K"] for atoms in frames} == {300.0}      # NVT at 300 K


def test_pipeline_example_gives_the_same_outputs_with_two_workers(serial_pipeline, tmp_path):
    workdir, _ = serial_pipeline
    done = run_example("relax_md_calculate.py", "-n", "2", "--workdir", str(tmp_path), *SMALLER, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert outputs_of(tmp_path) == outputs_of(workdir)


def test_pipeline_example_killed_during_md_resumes_to_the_same_outputs(serial_pipeline, tmp_path):
    workdir, _ = serial_pipeline
    command = [sys.executable, str(EXAMPLES / "relax_md_calculate.py"), "-n", "2", "--workdir", str(tmp_path),
               *SMALLER]
    proc = subprocess.Popen(command, cwd=tmp_path, env=driver_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # the MD step has started once its journal is there (the relaxed cells are written)
        assert wait_for(lambda: any(".md.xyz.journal" in p.name for p in tmp_path.iterdir()), timeout=300)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        end_process_group(proc)
    assert not (tmp_path / "md_lj.xyz").exists()
    done = run_example("relax_md_calculate.py", "-n", "2", "--workdir", str(tmp_path), *SMALLER, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert outputs_of(tmp_path) == outputs_of(workdir)
