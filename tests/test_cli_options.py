"""The options every run subcommand shares, exercised through ``wfl-like calculate``: calculator
factories, keyword files, per-structure settings, --errors, --timeout, --retries.
Run for real in subprocesses."""

import json
import subprocess
import sys
import textwrap

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.lj import LennardJones
from helpers import assert_ok, assert_usage_error, driver_env

RUN_TIMEOUT = 120
pytestmark = pytest.mark.timeout(2 * RUN_TIMEOUT + 60)

LJ = "ase.calculators.lj:LennardJones"


def run_cli(*args, cwd, preamble=None):
    """``wfl-like ARGS`` in a new interpreter; ``preamble`` is Python run first, in the same one."""
    args = [str(a) for a in args]
    if preamble is None:
        command = [sys.executable, "-m", "wfl_like.cli", *args]
    else:
        command = [sys.executable, "-c", f"{preamble}\nimport sys\nfrom wfl_like.cli import main\n"
                                         f"sys.exit(main(sys.argv[1:]))", *args]
    return subprocess.run(command, cwd=cwd, env=driver_env(), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)


def cu_dimer(distance, label):
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [distance, 0, 0]], cell=[12, 12, 12], pbc=True)
    atoms.info["label"] = label
    return atoms


def lj_energy(atoms, **kwargs):
    atoms = atoms.copy()
    atoms.calc = LennardJones(**kwargs)
    return atoms.get_potential_energy()


@pytest.fixture
def dimers(tmp_path):
    structures = [cu_dimer(2.2 + 0.1 * i, i) for i in range(4)]
    ase.io.write(tmp_path / "in.xyz", structures, parallel=False)
    return structures


def energies(path, key="LennardJones_energy"):
    return [at.info[key] for at in ase.io.read(path, ":", parallel=False)]


# --- keyword arguments from files ------------------------------------------------------------------

def test_json_kwargs_file_with_k_winning(tmp_path, dimers):
    (tmp_path / "lj.json").write_text(json.dumps({"sigma": 2.3, "epsilon": 0.4, "rc": 6.0}))
    proc = run_cli("calculate", "in.xyz", "-o", "out.xyz", "-c", LJ, "--calc-kwargs-file", "lj.json",
                   "-k", "epsilon=0.8", "-p", "energy", cwd=tmp_path)
    assert_ok(proc)
    np.testing.assert_allclose(energies(tmp_path / "out.xyz"),
                               [lj_energy(at, sigma=2.3, epsilon=0.8, rc=6.0) for at in dimers], rtol=1e-10)


def test_yaml_kwargs_file(tmp_path, dimers):
    pytest.importorskip("yaml")
    (tmp_path / "lj.yaml").write_text("sigma: 2.3\nepsilon: 0.4\nrc: 6.0\n")
    proc = run_cli("calculate", "in.xyz", "-o", "out.xyz", "-c", LJ, "--calc-kwargs-file", "lj.yaml",
                   "-p", "energy", "-n", "2", cwd=tmp_path)
    assert_ok(proc)
    np.testing.assert_allclose(energies(tmp_path / "out.xyz"),
                               [lj_energy(at, sigma=2.3, epsilon=0.4, rc=6.0) for at in dimers], rtol=1e-10)


def test_yaml_kwargs_file_without_pyyaml_is_a_clear_error(tmp_path, dimers):
    (tmp_path / "lj.yaml").write_text("sigma: 2.3\n")
    # as if PyYAML were not installed: its import fails
    proc = run_cli("calculate", "in.xyz", "-o", "out.xyz", "-c", LJ, "--calc-kwargs-file", "lj.yaml",
                   cwd=tmp_path, preamble="import sys; sys.modules['yaml'] = None")
    assert_usage_error(proc, "PyYAML", "lj.yaml", ".json")
    # a JSON file needs no PyYAML
    (tmp_path / "lj.json").write_text('{"sigma": 2.3, "rc": 6.0}')
    assert_ok(run_cli("calculate", "in.xyz", "-o", "out.xyz", "-c", LJ, "--calc-kwargs-file", "lj.json",
                      "-p", "energy", "-q", cwd=tmp_path, preamble="import sys; sys.modules['yaml'] = None"))


@pytest.mark.parametrize("name, text, words", [
    ("bad.json", "{sigma: 2.3", ["bad.json", "JSON"]),
    ("list.json", "[1, 2]", ["list.json", "mapping"]),
    ("lj.txt", '{"sigma": 2.3}', ["lj.txt", ".json"]),
])
def test_bad_kwargs_files_are_one_line_exit_2(tmp_path, dimers, name, text, words):
    (tmp_path / name).write_text(text)
    proc = run_cli("calculate", "in.xyz", "-o", "out.xyz", "-c", "ase.calculators.emt:EMT",
                   "--calc-kwargs-file", name, cwd=tmp_path)
    assert_usage_error(proc, *words)
    assert not (tmp_path / "out.xyz").exists()


def test_missing_kwargs_file(tmp_path, dimers):
    assert_usage_error(run_cli("calculate", "in.xyz", "-o", "out.xyz", "--calc-kwargs-file", "none.json",
                               cwd=tmp_path), "none.json")


# --- calculator factories --------------------------------------------------------------------------

FACTORIES = textwrap.dedent('''
    from ase.calculators.lj import LennardJones

    def make_lj(sigma=2.3, scale=1.0):
        return LennardJones(sigma=sigma, epsilon=0.5 * scale, rc=6.0)

    def make_nothing():
        return 42

    NOT_CALLABLE = 3
''')


def test_factory_function_on_the_command_line(tmp_path, dimers):
    (tmp_path / "my_factories.py").write_text(FACTORIES)
    proc = run_cli("calculate", "in.xyz", "-o", "out.xyz", "-c", "my_factories:make_lj", "-k", "scale=2",
                   "-p", "energy", "-n", "2", "--chunk-size", "1", cwd=tmp_path)
    assert_ok(proc)
    np.testing.assert_allclose(energies(tmp_path / "out.xyz", "make_lj_energy"),
                               [lj_energy(at, sigma=2.3, epsilon=1.0, rc=6.0) for at in dimers], rtol=1e-10)


@pytest.mark.parametrize("spec, args, words, code", [
    ("my_factories:make_lj", ["-k", "scael=2"], ["make_lj", "scael"], 2),
    ("my_factories:NOT_CALLABLE", [], ["NOT_CALLABLE"], 2),
    # what a function returns is known only once it runs: a failure of the run
    ("my_factories:make_nothing", [], ["make_nothing", "not an ASE calculator"], 1),
])
def test_bad_factories(tmp_path, dimers, spec, args, words, code):
    (tmp_path / "my_factories.py").write_text(FACTORIES)
    proc = run_cli("calculate", "in.xyz", "-o", "out.xyz", "-c", spec, *args, "-q", cwd=tmp_path)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("wfl-like: error:")
    for word in words:
        assert word in last, last
    assert not (tmp_path / "out.xyz").exists()


# --- per-structure settings, --errors --------------------------------------------------------------

def test_per_structure_settings_from_the_input_file(tmp_path):
    structures = [cu_dimer(2.2 + 0.1 * i, i) for i in range(3)]
    structures[1].info["WFL_CALCULATOR_KWARGS"] = {"epsilon": 2.0}
    ase.io.write(tmp_path / "in.xyz", structures, parallel=False)
    proc = run_cli("calculate", "in.xyz", "-o", "out.xyz", "-c", LJ, "-k", "sigma=2.3", "-k", "rc=6.0",
                   "-p", "energy", "-n", "2", "--chunk-size", "1", cwd=tmp_path)
    assert_ok(proc)
    np.testing.assert_allclose(energies(tmp_path / "out.xyz"),
                               [lj_energy(structures[0], sigma=2.3, rc=6.0),
                                lj_energy(structures[1], sigma=2.3, rc=6.0, epsilon=2.0),
                                lj_energy(structures[2], sigma=2.3, rc=6.0)], rtol=1e-10)


@pytest.fixture
def one_bad(tmp_path):
    structures = [cu_dimer(2.2 + 0.1 * i, i) for i in range(3)]
    structures[1].info["WFL_CALCULATOR_KWARGS"] = "epsilon=2"      # not a dict: that structure fails
    ase.io.write(tmp_path / "in.xyz", structures, parallel=False)


def test_errors_raise_is_the_default(tmp_path, one_bad):
    proc = run_cli("calculate", "in.xyz", "-o", "out.xyz", "-c", LJ, "-p", "energy", "-q", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "WFL_CALCULATOR_KWARGS" in proc.stderr
    assert not (tmp_path / "out.xyz").exists()


def test_errors_skip_leaves_the_failed_structure_out(tmp_path, one_bad):
    proc = run_cli("calculate", "in.xyz", "-o", "out.xyz", "-c", LJ, "-p", "energy", "--errors", "skip",
                   "-n", "2", "--retries", "0", "--timeout", "60", cwd=tmp_path)
    assert_ok(proc)
    assert [at.info["label"] for at in ase.io.read(tmp_path / "out.xyz", ":", parallel=False)] == [0, 2]
    assert "WFL_CALCULATOR_KWARGS" in proc.stderr


def test_timeout_without_workers_is_warned_about(tmp_path, dimers):
    proc = run_cli("calculate", "in.xyz", "-o", "out.xyz", "-p", "energy", "--timeout", "60",
                   "-c", LJ, cwd=tmp_path)
    assert_ok(proc)
    assert "timeout" in proc.stderr and "not enforced" in proc.stderr


@pytest.mark.parametrize("args, words", [
    (["--timeout", "0"], ["--timeout"]),
    (["--retries", "-1"], ["--retries"]),
])
def test_bad_run_options_are_one_line_exit_2(tmp_path, dimers, args, words):
    assert_usage_error(run_cli("calculate", "in.xyz", "-o", "out.xyz", *args, cwd=tmp_path), *words)


def test_every_run_subcommand_has_the_shared_options(tmp_path):
    for command in ("calculate", "relax", "md"):
        proc = run_cli(command, "--help", cwd=tmp_path)
        assert_ok(proc)
        for option in ("--calculator", "--calc-kwarg", "--calc-kwargs-file", "--num-processes", "--chunk-size",
                       "--timeout", "--errors", "--retries", "--overwrite", "--mpi", "--quiet"):
            assert option in proc.stdout, (command, option)
