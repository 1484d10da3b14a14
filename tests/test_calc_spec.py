"""Calculator specs in calculate: per-structure settings, factories, built-calculator reuse,
a calculator's own default chunking.  Real calculators (EMT, LennardJones), real workers."""

import logging
import os
import uuid
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones

from wfl_like import ConfigSet, OutputSpec
from wfl_like.calculators import spec as calc_spec
from wfl_like.calculators.generic import calculate, construct_calculator
from wfl_like.errors import AutoparallelizeError, FailedItemsWarning


@pytest.fixture(autouse=True)
def _no_worker_env(monkeypatch):
    monkeypatch.delenv("WFL_NUM_PYTHON_SUBPROCESSES", raising=False)


# --- module-level helpers (they must pickle to reach the workers) ----------------------------

def dimer(distance, label):
    """A Cu dimer in a box, ``info["label"] = label``."""
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [distance, 0, 0]], cell=[12, 12, 12], pbc=True)
    atoms.info["label"] = label
    return atoms


def direct_energy(atoms, calculator):
    atoms = atoms.copy()
    atoms.calc = calculator
    return atoms.get_potential_energy()


def make_lj(sigma=2.3, epsilon=1.0):
    """A factory function (as ``mace_mp`` is), not a class."""
    return LennardJones(sigma=sigma, epsilon=epsilon, rc=6.0)


def make_nothing():
    return {"not": "a calculator"}


def refuse_to_build(**kwargs):
    raise RuntimeError("the default calculator cannot be built here")


class MarkedLJ(LennardJones):
    """LennardJones that leaves a marker file (named by process and its epsilon) when built."""

    def __init__(self, marker_dir, **kwargs):
        super().__init__(**kwargs)
        Path(marker_dir, f"{os.getpid()}-{kwargs.get('epsilon', 1.0)}-{uuid.uuid4().hex}").touch()


class ScaledLJ(LennardJones):
    """LennardJones whose one positional argument is its epsilon."""

    def __init__(self, epsilon, **kwargs):
        super().__init__(epsilon=epsilon, rc=6.0, **kwargs)


class ChunkOfThreeEMT(EMT):
    wfl_generic_default_autopara_info = {"num_inputs_per_python_subprocess": 3}


class BadDefaultsEMT(EMT):
    wfl_generic_default_autopara_info = 3


def markers(directory):
    """``[(pid, epsilon), ...]`` of the calculators built, from their marker files."""
    return sorted((name.split("-")[0], name.split("-")[1]) for name in os.listdir(directory))


def run(structures, calculator, workers=0, chunk=None, outputs=None, **kwargs):
    autopara = {"num_python_subprocesses": workers}
    if chunk is not None:
        autopara["num_inputs_per_python_subprocess"] = chunk
    return list(calculate(ConfigSet(structures), OutputSpec() if outputs is None else outputs, calculator,
                          properties=["energy", "forces"], autopara_info=autopara, **kwargs))


# --- per-structure settings -------------------------------------------------------------------

def campaign():
    """Six dimers: defaults, their own epsilon, their own constructor, their own args."""
    structures = [dimer(2.1 + 0.05 * i, i) for i in range(6)]
    structures[1].info["WFL_CALCULATOR_KWARGS"] = {"epsilon": 2.0}
    structures[3].info["WFL_CALCULATOR_KWARGS"] = {"epsilon": 0.5, "sigma": 2.4}
    structures[4].info["WFL_CALCULATOR_INITIALIZER"] = EMT
    structures[4].info["WFL_CALCULATOR_KWARGS"] = {}
    structures[5].info["WFL_CALCULATOR_INITIALIZER"] = "ase.calculators.emt:EMT"
    return structures


SPEC = (LennardJones, [], {"sigma": 2.3, "rc": 6.0})


def expected_energies():
    structures = campaign()
    return [direct_energy(structures[0], LennardJones(sigma=2.3, rc=6.0)),
            direct_energy(structures[1], LennardJones(sigma=2.3, rc=6.0, epsilon=2.0)),
            direct_energy(structures[2], LennardJones(sigma=2.3, rc=6.0)),
            direct_energy(structures[3], LennardJones(sigma=2.4, rc=6.0, epsilon=0.5)),
            direct_energy(structures[4], EMT()),
            direct_energy(structures[5], EMT())]


@pytest.mark.parametrize("workers, chunk", [(0, None), (2, 1), (2, 4)])
def test_structures_with_settings_of_their_own_get_their_own_calculator(workers, chunk):
    out = run(campaign(), SPEC, workers=workers, chunk=chunk)
    assert [at.info["label"] for at in out] == list(range(6))
    # one prefix, from the spec's constructor, whatever each structure was evaluated with
    energies = [at.info["LennardJones_energy"] for at in out]
    np.testing.assert_allclose(energies, expected_energies(), rtol=1e-12)
    # the LJ epsilon=2 dimer has twice the energy of the same dimer at epsilon=1
    plain = direct_energy(campaign()[1], LennardJones(sigma=2.3, rc=6.0))
    np.testing.assert_allclose(energies[1], 2 * plain, rtol=1e-12)


def test_settings_are_kept_in_the_outputs_and_survive_a_file(tmp_path):
    # as in wfl: the settings belong to the structure, and a later calculation of the
    # same structures (read back from the file) must still see them
    inputs = campaign()[:4] + campaign()[5:]
    ase.io.write(tmp_path / "in.xyz", inputs, parallel=False)
    out = run(ConfigSet(tmp_path / "in.xyz"), SPEC, workers=2, chunk=2, outputs=OutputSpec(tmp_path / "out.xyz"))
    assert out[1].info["WFL_CALCULATOR_KWARGS"] == {"epsilon": 2.0}
    assert out[4].info["WFL_CALCULATOR_INITIALIZER"] == "ase.calculators.emt:EMT"
    again = run(ConfigSet(tmp_path / "out.xyz"), SPEC, outputs=OutputSpec(tmp_path / "again.xyz"))
    wanted = [e for i, e in enumerate(expected_energies()) if i != 4]
    np.testing.assert_allclose([at.info["LennardJones_energy"] for at in out], wanted, rtol=1e-10)
    np.testing.assert_allclose([at.info["LennardJones_energy"] for at in again], wanted, rtol=1e-10)


def test_args_of_a_structure_replace_the_specs():
    structures = [dimer(2.2, "default"), dimer(2.2, "own args")]
    structures[1].info["WFL_CALCULATOR_ARGS"] = [2.0]
    out = run(structures, (ScaledLJ, [1.0], {"sigma": 2.3}), workers=2, chunk=1)
    energies = [at.info["ScaledLJ_energy"] for at in out]
    np.testing.assert_allclose(energies[1], 2 * energies[0], rtol=1e-12)


def test_settings_need_a_spec_not_an_instance():
    structures = [dimer(2.2, 0), dimer(2.2, 1)]
    structures[1].info["WFL_CALCULATOR_KWARGS"] = {"epsilon": 2.0}
    with pytest.raises(AutoparallelizeError) as info:
        run(structures, LennardJones(rc=6.0))
    [failure] = info.value.failures
    assert failure.index == 1
    assert isinstance(failure.exception, TypeError)
    assert "WFL_CALCULATOR_KWARGS" in failure.reason and "spec" in failure.reason


@pytest.mark.parametrize("key, value, words", [
    ("WFL_CALCULATOR_KWARGS", "epsilon=2", "must be a dict"),
    ("WFL_CALCULATOR_ARGS", "abc", "must be a list"),
    ("WFL_CALCULATOR_INITIALIZER", 3, "must be a callable"),
    ("WFL_CALCULATOR_INITIALIZER", "ase.calculators.emt", "MODULE:NAME"),
    ("WFL_CALCULATOR_INITIALIZER", "ase.calculators.emt:NoSuchThing", "NoSuchThing"),
])
def test_malformed_settings_fail_that_structure_only(key, value, words):
    structures = [dimer(2.2, 0), dimer(2.25, 1), dimer(2.3, 2)]
    structures[1].info[key] = value
    with pytest.warns(FailedItemsWarning):
        result = calculate(structures, OutputSpec(), SPEC, properties=["energy"],
                           autopara_info={"errors": "skip", "num_python_subprocesses": 0})
    assert [at.info["label"] for at in result] == [0, 2]
    [failure] = result.failures
    assert failure.index == 1 and isinstance(failure.exception, TypeError)
    assert key in failure.reason and words in failure.reason


def test_default_calculator_is_built_only_if_a_structure_needs_it():
    # as wfl: a default that cannot be built is no error when every structure brings its own
    structures = [dimer(2.2, 0), dimer(2.3, 1)]
    for atoms in structures:
        atoms.info["WFL_CALCULATOR_INITIALIZER"] = make_lj
    out = run(structures, (refuse_to_build, [], {}))
    np.testing.assert_allclose([at.info["refuse_to_build_energy"] for at in out],
                               [direct_energy(at, make_lj()) for at in structures], rtol=1e-12)


# --- calculators built once, and reused --------------------------------------------------------

def test_alternating_settings_build_each_calculator_once_per_process(tmp_path):
    structures = [dimer(2.1 + 0.02 * i, i) for i in range(12)]
    for atoms in structures[1::2]:
        atoms.info["WFL_CALCULATOR_KWARGS"] = {"epsilon": 2.0}
    spec = (MarkedLJ, [], {"marker_dir": str(tmp_path), "rc": 6.0})
    out = run(structures, spec, chunk=4)
    assert len(out) == 12
    # serial: the default and the epsilon=2 calculator, each built once, in this process
    assert markers(tmp_path) == [(str(os.getpid()), "1.0"), (str(os.getpid()), "2.0")]


def test_settings_equal_to_the_default_reuse_its_calculator(tmp_path):
    structures = [dimer(2.2, 0), dimer(2.3, 1)]
    structures[1].info["WFL_CALCULATOR_KWARGS"] = {"rc": 6.0}      # what the spec already says
    run(structures, (MarkedLJ, [], {"marker_dir": str(tmp_path), "rc": 6.0}))
    assert len(markers(tmp_path)) == 1


def test_with_workers_each_builds_what_its_structures_need_once(tmp_path):
    structures = [dimer(2.1 + 0.02 * i, i) for i in range(8)]
    for atoms in structures[4:]:
        atoms.info["WFL_CALCULATOR_KWARGS"] = {"epsilon": 3.0}
    run(structures, (MarkedLJ, [], {"marker_dir": str(tmp_path), "rc": 6.0}), workers=2, chunk=2)
    built = markers(tmp_path)
    assert str(os.getpid()) not in {pid for pid, _ in built}
    # no process built one setting twice
    assert len(built) == len(set(built)) and {eps for _, eps in built} == {"1.0", "3.0"}


def test_construct_calculator_passes_an_instance_through_and_builds_a_spec_once():
    instance = EMT()
    assert construct_calculator(instance) is instance
    spec = (make_lj, [], {"sigma": 2.35})
    first = construct_calculator(spec)
    assert isinstance(first, LennardJones) and first.parameters.sigma == 2.35
    assert construct_calculator((make_lj, [], {"sigma": 2.35})) is first
    with pytest.raises(TypeError, match="make_nothing"):
        construct_calculator((make_nothing, [], {}))
    with pytest.raises(TypeError, match="kwargs"):
        construct_calculator((make_lj, [], ["sigma"]))


# --- factories ---------------------------------------------------------------------------------

def test_a_factory_function_is_a_constructor():
    structures = [dimer(2.2, 0), dimer(2.3, 1)]
    out = run(structures, (make_lj, [], {"sigma": 2.4}), workers=2, chunk=1)
    # the _auto_ prefix is the constructor's name, as wfl's
    np.testing.assert_allclose([at.info["make_lj_energy"] for at in out],
                               [direct_energy(at, make_lj(sigma=2.4)) for at in structures], rtol=1e-12)


def test_a_factory_that_returns_no_calculator_is_a_type_error_naming_it():
    with pytest.raises(AutoparallelizeError) as info:
        run([dimer(2.2, 0)], (make_nothing, [], {}))
    [failure] = info.value.failures
    assert isinstance(failure.exception, TypeError) and "make_nothing" in failure.reason


# --- a calculator's own default autopara_info ----------------------------------------------------

def chunk_size_logged(caplog, structures, calculator, **kwargs):
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="wfl_like.autoparallelize"):
        calculate(structures, OutputSpec(), calculator, properties=["energy"], **kwargs)
    sizes = [r.getMessage().rsplit("num_inputs_per_python_subprocess=", 1)[1] for r in caplog.records
             if "num_inputs_per_python_subprocess=" in r.getMessage()]
    assert len(sizes) == 1, caplog.text
    return sizes[0]


def test_default_chunking_comes_from_the_calculator(caplog):
    structures = [dimer(2.2 + 0.01 * i, i) for i in range(7)]
    assert chunk_size_logged(caplog, structures, EMT()) == "10"
    assert chunk_size_logged(caplog, structures, ChunkOfThreeEMT()) == "3"
    assert chunk_size_logged(caplog, structures, (ChunkOfThreeEMT, [], {})) == "3"
    # the caller's choice still wins
    assert chunk_size_logged(caplog, structures, ChunkOfThreeEMT(),
                             autopara_info={"num_inputs_per_python_subprocess": 2}) == "2"


def test_malformed_calculator_defaults_are_refused_before_any_work():
    with pytest.raises(TypeError, match="wfl_generic_default_autopara_info"):
        calculate([dimer(2.2, 0)], OutputSpec(), BadDefaultsEMT())


def test_verbose_logs_each_structure(caplog):
    with caplog.at_level(logging.INFO, logger="wfl_like.calculators"):
        calculate([dimer(2.2, 0), dimer(2.3, 1)], OutputSpec(), EMT(), properties=["energy"], verbose=True,
                  autopara_info={"num_python_subprocesses": 0})
    assert sum("evaluating structure" in r.getMessage() for r in caplog.records) == 2


def test_spec_module_helpers():
    assert calc_spec.import_callable("ase.calculators.emt:EMT") is EMT
    with pytest.raises(ValueError, match="MODULE:NAME"):
        calc_spec.import_callable("EMT")
    with pytest.raises(ImportError, match="no_such_module"):
        calc_spec.import_callable("no_such_module:X")
    with pytest.raises(ValueError, match="not a calculator"):
        calc_spec.import_callable("ase.units:fs")


def lj_from_file(path):
    """A factory of the ML kind: its model (here LJ's sigma) is read from a file when built."""
    from ase.calculators.lj import LennardJones

    with open(path) as f:
        return LennardJones(sigma=float(f.read()), epsilon=1.0, rc=6.0)


@pytest.mark.parametrize("where", ["serial", "thread executor"])
def test_a_later_call_builds_its_calculators_anew_from_a_changed_model_file(tmp_path, where):
    # an active-learning loop: retrain into the same file, evaluate again; the second call
    # must not get the calculator the first call built (in the driver, or in an executor's
    # long-lived workers)
    from concurrent.futures import ThreadPoolExecutor

    from ase.build import molecule

    model = tmp_path / "sigma.txt"
    spec = (lj_from_file, [str(model)], {})
    energies = []
    with ThreadPoolExecutor(1) as executor:
        autopara = {"executor": executor} if where == "thread executor" else {"num_python_subprocesses": 0}
        for sigma in ("1.0", "1.3"):
            model.write_text(sigma)
            out = calculate([molecule("CH4")], OutputSpec(), spec, properties=["energy"], output_prefix="lj_",
                            autopara_info=autopara)
            energies.append(list(out)[0].info["lj_energy"])
    expected = []
    for sigma in ("1.0", "1.3"):
        model.write_text(sigma)
        atoms = molecule("CH4")
        atoms.calc = lj_from_file(str(model))
        expected.append(atoms.get_potential_energy())
    assert energies == pytest.approx(expected) and expected[0] != pytest.approx(expected[1])


class SCFLikeEMT(EMT):
    """EMT that says, as DFT calculators do, whether its SCF converged."""

    converged = True


def test_calculate_keeps_the_scf_converged_flag_under_the_prefix(tmp_path):
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.5]], cell=[6, 6, 6], pbc=True)
    out = calculate([atoms, atoms.copy()], OutputSpec(tmp_path / "out.xyz"), (SCFLikeEMT, [], {}),
                    properties=["energy"], output_prefix="dft_")
    assert [a.info["dft_converged"] for a in out] == [True, True]
    assert "converged" not in ase.io.read(tmp_path / "out.xyz", 0, parallel=False).info
