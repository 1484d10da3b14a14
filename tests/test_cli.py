"""Tests of the ``wfl-like`` command line, run for real in subprocesses."""

import io
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from helpers import driver_env, group_exists, wait_for

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "data" / "cu_rattled.xyz"
N_EXAMPLE = 40

# Seconds one command may take: far more than it needs, even on a loaded machine.
RUN_TIMEOUT = 120

# Deadline of a wait on the command's processes (start-up, exit, reaping).
DEADLINE = 60


def cli_timeout(calls=1, waits=0):
    """A pytest time limit above the limits of a test's own commands and waits, so that
    a hang is reported by the command's or the wait's own failure, which says which."""
    return pytest.mark.timeout(calls * RUN_TIMEOUT + waits * DEADLINE + 60)


# most tests run one command; those that run more, or wait on a run, say so
pytestmark = cli_timeout(1)


def console_script():
    beside = Path(sys.executable).parent / "wfl-like"
    if beside.exists():
        return str(beside)
    found = shutil.which("wfl-like")
    if found is None:
        pytest.skip("the wfl-like console script is not installed")
    return found


def run_cli(*args, cwd, script=False, timeout=RUN_TIMEOUT):
    command = [console_script()] if script else [sys.executable, "-m", "wfl_like.cli"]
    return subprocess.run(command + [str(a) for a in args], cwd=cwd, env=driver_env(), capture_output=True,
                          text=True, timeout=timeout)


def assert_ok(proc):
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def direct(atoms, calculator):
    atoms = atoms.copy()
    atoms.calc = calculator
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()


def assert_emt_results(path, originals, prefix="EMT_", calculator_factory=EMT):
    computed = ase.io.read(path, ":")
    assert len(computed) == len(originals)
    for atoms, original in zip(computed, originals):
        assert atoms.info["structure_id"] == original.info["structure_id"]
        energy, forces, stress = direct(original, calculator_factory())
        np.testing.assert_allclose(atoms.info[prefix + "energy"], energy, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(atoms.arrays[prefix + "forces"], forces, atol=1e-7)
        np.testing.assert_allclose(atoms.info[prefix + "stress"], stress, atol=1e-8)
        assert prefix + "calculation_failed" not in atoms.info


@pytest.fixture(scope="module")
def originals():
    return ase.io.read(EXAMPLE, ":")


def no_partial_files(directory):
    return not list(Path(directory).glob(".*.partial"))


# --- calculate ------------------------------------------------------------------------------

def test_calculate_example_matches_direct_emt(tmp_path, originals):
    proc = run_cli("calculate", EXAMPLE, "-o", "out.xyz", cwd=tmp_path)
    assert_ok(proc)
    assert_emt_results(tmp_path / "out.xyz", originals)
    assert no_partial_files(tmp_path)


def test_console_script(tmp_path, originals):
    proc = run_cli("calculate", EXAMPLE, "-o", tmp_path / "out.xyz", "-q", cwd=tmp_path, script=True)
    assert_ok(proc)
    assert_emt_results(tmp_path / "out.xyz", originals)


@cli_timeout(2)
def test_two_processes_byte_identical_to_serial(tmp_path, originals):
    assert_ok(run_cli("calculate", EXAMPLE, "-o", "serial.xyz", cwd=tmp_path))
    assert_ok(run_cli("calculate", EXAMPLE, "-o", "parallel.xyz", "-n", "2", "--chunk-size", "3", cwd=tmp_path))
    serial_bytes = (tmp_path / "serial.xyz").read_bytes()
    assert serial_bytes
    assert serial_bytes == (tmp_path / "parallel.xyz").read_bytes()
    assert_emt_results(tmp_path / "parallel.xyz", originals)


def test_properties_energy_only(tmp_path, originals):
    assert_ok(run_cli("calculate", EXAMPLE, "-o", "out.xyz", "--properties", "energy", cwd=tmp_path))
    computed = ase.io.read(tmp_path / "out.xyz", ":")
    assert len(computed) == N_EXAMPLE
    for atoms, original in zip(computed, originals):
        energy, _, _ = direct(original, EMT())
        np.testing.assert_allclose(atoms.info["EMT_energy"], energy, rtol=1e-8)
        assert "EMT_forces" not in atoms.arrays
        assert "EMT_stress" not in atoms.info


def test_prefix_and_chunk_size(tmp_path, originals):
    assert_ok(run_cli("calculate", EXAMPLE, "-o", "out.xyz", "--prefix", "ref_", "--chunk-size", "7", cwd=tmp_path))
    assert_emt_results(tmp_path / "out.xyz", originals, prefix="ref_")
    assert "EMT_energy" not in (tmp_path / "out.xyz").read_text()


def test_calculator_and_keyword_arguments(tmp_path, originals):
    proc = run_cli("calculate", EXAMPLE, "-o", "lj.xyz", "--calculator", "ase.calculators.lj:LennardJones",
                   "-k", "sigma=2.3", "-k", "epsilon=0.4", cwd=tmp_path)
    assert_ok(proc)
    assert_emt_results(tmp_path / "lj.xyz", originals, prefix="LennardJones_",
                       calculator_factory=lambda: LennardJones(sigma=2.3, epsilon=0.4))
    # the parameters made a difference: default LennardJones gives other energies
    computed = ase.io.read(tmp_path / "lj.xyz", ":")
    default_energy, _, _ = direct(originals[0], LennardJones())
    assert not np.isclose(computed[0].info["LennardJones_energy"], default_energy)


@cli_timeout(5)
def test_existing_output_is_kept_and_overwrite_replaces_it(tmp_path, originals):
    out = tmp_path / "out.xyz"
    assert_ok(run_cli("calculate", EXAMPLE, "-o", out, cwd=tmp_path))
    first_bytes, first_stat = out.read_bytes(), out.stat()

    # second run: nothing recomputed, the file is untouched
    assert_ok(run_cli("calculate", EXAMPLE, "-o", out, "-n", "2", cwd=tmp_path))
    second_stat = out.stat()
    assert (second_stat.st_ino, second_stat.st_mtime_ns) == (first_stat.st_ino, first_stat.st_mtime_ns)
    assert out.read_bytes() == first_bytes

    # a file edited after the run is not handed back: the journal rebuilds it ...
    stale = originals[0].copy()
    stale.info["EMT_energy"] = -999.0
    ase.io.write(out, [stale], format="extxyz")
    assert_ok(run_cli("calculate", EXAMPLE, "-o", out, cwd=tmp_path))
    assert out.read_bytes() == first_bytes

    # ... a file written by another tool (no journal) is reused as it is, with a warning ...
    (tmp_path / ".out.xyz.journal.sqlite").unlink()
    ase.io.write(out, [stale], format="extxyz")
    stale_bytes = out.read_bytes()
    proc = run_cli("calculate", EXAMPLE, "-o", out, cwd=tmp_path)
    assert proc.returncode == 0 and "could not be checked" in proc.stderr
    assert out.read_bytes() == stale_bytes

    # ... and --overwrite recomputes and replaces it
    assert_ok(run_cli("calculate", EXAMPLE, "-o", out, "--overwrite", cwd=tmp_path))
    assert out.read_bytes() == first_bytes
    assert_emt_results(out, originals)
    assert no_partial_files(tmp_path)


@pytest.mark.parametrize("how", ["files", "glob"])
def test_several_inputs_give_one_output(tmp_path, originals, how):
    ase.io.write(tmp_path / "part_a.xyz", originals[:15], format="extxyz")
    ase.io.write(tmp_path / "part_b.xyz", originals[15:], format="extxyz")
    inputs = ["part_a.xyz", "part_b.xyz"] if how == "files" else ["part_*.xyz"]
    assert_ok(run_cli("calculate", *inputs, "-o", "all.xyz", "-n", "2", cwd=tmp_path))
    assert_emt_results(tmp_path / "all.xyz", originals)
    assert sorted(p.name for p in tmp_path.glob("*.xyz")) == ["all.xyz", "part_a.xyz", "part_b.xyz"]


# --- errors -------------------------------------------------------------------------------

ERROR_CASES = {
    "missing input file": (["calculate", "does_not_exist.xyz", "-o", "out.xyz"], "does_not_exist.xyz"),
    "glob matching nothing": (["calculate", "nothing_here_*.xyz", "-o", "out.xyz"], "nothing_here_*.xyz"),
    "unknown calculator module": (["calculate", EXAMPLE, "-o", "out.xyz", "-c", "no_such_module_xyz:Calc"],
                                  "no_such_module_xyz"),
    "module without the class": (["calculate", EXAMPLE, "-o", "out.xyz", "-c", "ase.calculators.emt:NoSuchCalc"],
                                 "NoSuchCalc"),
    "calculator without colon": (["calculate", EXAMPLE, "-o", "out.xyz", "-c", "ase.calculators.emt"],
                                 "MODULE:NAME"),
    "malformed -k": (["calculate", EXAMPLE, "-o", "out.xyz", "-k", "sigma2.3"], "sigma2.3"),
    "malformed -k key": (["calculate", EXAMPLE, "-o", "out.xyz", "-k", "=2.3"], "=2.3"),
    "missing -o": (["calculate", EXAMPLE], "-o"),
    "not a calculator": (["calculate", EXAMPLE, "-o", "out.xyz", "-c", "collections:OrderedDict"],
                         "OrderedDict"),
    "output format that cannot be appended": (["calculate", EXAMPLE, "-o", "out.traj"], "out.traj"),
    "garbage input file": (["calculate", "garbage.xyz", "-o", "out.xyz", "-q"], "garbage.xyz"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_is_one_line_with_exit_code_2(tmp_path, case):
    args, expected = ERROR_CASES[case]
    (tmp_path / "garbage.xyz").write_text("3\nnot a comment line of extended XYZ\nCu 0 0\n")
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("wfl-like: error:"), lines[0]
    assert expected in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out.xyz").exists() and not (tmp_path / "out.traj").exists()
    assert no_partial_files(tmp_path)


def test_error_exit_code_with_console_script(tmp_path):
    proc = run_cli("calculate", "does_not_exist.xyz", "-o", "out.xyz", cwd=tmp_path, script=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("wfl-like: error:") and "does_not_exist.xyz" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1


# --- help ---------------------------------------------------------------------------------

def test_help(tmp_path):
    proc = run_cli("--help", cwd=tmp_path, script=True)
    assert proc.returncode == 0, proc.stderr
    assert "calculate" in proc.stdout


def test_calculate_help(tmp_path):
    proc = run_cli("calculate", "--help", cwd=tmp_path, script=True)
    assert proc.returncode == 0, proc.stderr
    assert "OUTPUT" in proc.stdout
    assert "--overwrite" in proc.stdout


# --- signals ------------------------------------------------------------------------------

# A calculator that computes EMT for real, and then, after GATE_AFTER structures in one
# process, blocks for good: however long the test waits for its CPU share, the run is
# still going when it is signalled (without it, a starved test could find it finished).
GATE_AFTER = 150
GATED_CALCULATOR = textwrap.dedent("""
    import time
    from ase.calculators.emt import EMT

    computed = 0

    class GatedEMT(EMT):
        def calculate(self, *args, **kwargs):
            global computed
            computed += 1
            while computed > {gate_after}:
                time.sleep(3600)
            super().calculate(*args, **kwargs)
""").format(gate_after=GATE_AFTER)


@pytest.fixture(scope="module")
def big_input(tmp_path_factory):
    """1000 copies of a 108-atom Cu cell: more than the gated calculator lets 2 workers do."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (3, 3, 3)
    atoms.rattle(0.05, seed=1)
    text = io.StringIO()
    ase.io.write(text, atoms, format="extxyz")
    path = tmp_path_factory.mktemp("big") / "big.xyz"
    path.write_text(text.getvalue() * 1000)
    return path


@pytest.fixture(scope="module")
def gated_calculator_path(tmp_path_factory):
    """A directory to put on PYTHONPATH, holding the module ``gated_emt``."""
    directory = tmp_path_factory.mktemp("calculators")
    (directory / "gated_emt.py").write_text(GATED_CALCULATOR)
    return directory


@cli_timeout(calls=0, waits=3)
@pytest.mark.parametrize("signum, workers, target", [
    (signal.SIGTERM, 0, "process"),
    (signal.SIGTERM, 2, "process"),
    (signal.SIGTERM, 2, "group"),      # as `timeout` or a batch system would send it
    (signal.SIGINT, 0, "process"),
    (signal.SIGINT, 2, "process"),
    (signal.SIGINT, 2, "group"),       # as Ctrl-C in a terminal would send it
], ids=lambda v: getattr(v, "name", str(v)))
def test_signal_stops_cleanly(tmp_path, big_input, gated_calculator_path, signum, workers, target):
    out = tmp_path / "out.xyz"
    partial = tmp_path / ".out.xyz.partial"
    stderr_path = tmp_path / "stderr.txt"
    command = [console_script(), "calculate", str(big_input), "-o", str(out), "-n", str(workers),
               "-c", "gated_emt:GatedEMT"]
    python_path = os.pathsep.join(filter(None, [str(gated_calculator_path), os.environ.get("PYTHONPATH")]))
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(command, cwd=tmp_path, env=driver_env(PYTHONPATH=python_path),
                                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    pgid = proc.pid
    try:
        # the partial file is created (and locked) before any work: wait for a structure in it
        assert wait_for(lambda: partial.exists() and partial.stat().st_size > 0, DEADLINE), \
            f"the run did not start writing its output\n{stderr_path.read_text()}"
        assert proc.poll() is None, f"the run ended before it was signalled\n{stderr_path.read_text()}"
        if target == "group":
            os.killpg(pgid, signum)
        else:
            proc.send_signal(signum)
        try:
            returncode = proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run was still going {DEADLINE} s after the signal\n{stderr_path.read_text()}")
    finally:
        if proc.poll() is None:
            os.killpg(pgid, signal.SIGKILL)
            proc.wait()
    stderr_text = stderr_path.read_text()
    assert returncode == 128 + signum, stderr_text
    assert "Traceback" not in stderr_text, stderr_text
    assert not out.exists()
    assert not partial.exists()
    assert no_partial_files(tmp_path)
    # a killed worker stays in the group as a zombie until it is reaped
    assert wait_for(lambda: not group_exists(pgid), DEADLINE), "processes of the run are still alive"


def test_calculator_keyword_it_does_not_list_is_warned_about(tmp_path):
    proc = run_cli("calculate", EXAMPLE, "-o", "out.xyz", "-q", "-c", "ase.calculators.lj:LennardJones",
                   "-k", "sigmaa=2.3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "sigmaa" in proc.stderr and "sigma" in proc.stderr
