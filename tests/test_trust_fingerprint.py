"""What an item's cache key covers (issue 8, points 1, 2 and 17's lock case, and ``cache_extra``).

Every test runs the engine for real on real files: an operation counts its work with
marker files (one per item computed), reruns are compared by those counts and by what
they write.  Changes to code are made by rewriting modules on disk and running a fresh
driver process, as a user edits and reruns a script.
"""

import json
import subprocess
import sys
import textwrap
import threading
import uuid
from collections import Counter
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from helpers import driver_env
from wfl_like import AutoparaInfo, ConfigSet, OutputSpec
from wfl_like.autoparallelize import autoparallelize
from wfl_like.autoparallelize.resume.code_identity import INSTALLED, LOCAL, STDLIB, module_origin
from wfl_like.autoparallelize.resume.fingerprint import fingerprint, fingerprint_call, fingerprint_extra
from wfl_like.autoparallelize.resume.journal import journal_path

N_ITEMS = 8


@pytest.fixture(autouse=True)
def _no_worker_env(monkeypatch):
    monkeypatch.delenv("WFL_NUM_PYTHON_SUBPROCESSES", raising=False)
    monkeypatch.delenv("WFL_LIKE_START_METHOD", raising=False)


def mark(markers, label):
    Path(markers, f"{label}-{uuid.uuid4().hex}").touch()


def computed(markers):
    """How many times each label was computed."""
    return Counter(int(p.name.split("-")[0]) for p in Path(markers).iterdir())


def para(nproc=0, chunk=1, **more):
    return AutoparaInfo(num_python_subprocesses=nproc, num_inputs_per_python_subprocess=chunk, **more)


@pytest.fixture
def markers(tmp_path):
    path = tmp_path / "markers"
    path.mkdir()
    return path


# --- 1. everything a structure carries counts ---------------------------------------------------

def reference_op(atoms_list, markers):
    """Reports the reference energy and largest force each structure carries (from its file)."""
    outputs = []
    for atoms in atoms_list:
        mark(markers, atoms.info["label"])
        forces = atoms.calc.results["forces"]
        outputs.append(Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc,
                             info={"label": atoms.info["label"], "seen_energy": atoms.calc.results["energy"],
                                   "seen_fmax": float(np.abs(forces).max())}))
    return outputs


def write_references(path, energy_shift=None, force_shift=None):
    """An extended XYZ file of structures with reference energies and forces; the labels in
    ``energy_shift`` / ``force_shift`` get corrected values."""
    rng = np.random.default_rng(1)
    configs = []
    for label in range(N_ITEMS):
        atoms = Atoms("Cu2", positions=rng.random((2, 3)) * 3, cell=[4, 4, 4], pbc=True, info={"label": label})
        energy = -1.0 - label + (energy_shift or {}).get(label, 0.0)
        forces = np.full((2, 3), 0.1 * label) + (force_shift or {}).get(label, 0.0)
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        configs.append(atoms)
    ase.io.write(path, configs, format="extxyz")


def test_corrected_reference_energies_and_forces_recompute_exactly_those_items(tmp_path, markers):
    inputs, out = tmp_path / "refs.xyz", tmp_path / "out.xyz"
    write_references(inputs)
    autoparallelize(reference_op, ConfigSet(inputs), OutputSpec(out), markers, autopara_info=para(2, 2))
    assert sum(computed(markers).values()) == N_ITEMS

    # the file's reference data is corrected: an energy in one frame, forces in another
    write_references(inputs, energy_shift={2: -0.25}, force_shift={6: 1.0})
    autoparallelize(reference_op, ConfigSet(inputs), OutputSpec(out), markers, autopara_info=para(2, 2))

    assert computed(markers) == Counter({label: 2 if label in (2, 6) else 1 for label in range(N_ITEMS)})
    written = {a.info["label"]: a.info for a in ase.io.read(out, ":")}
    assert written[2]["seen_energy"] == pytest.approx(-3.25)
    assert written[6]["seen_fmax"] == pytest.approx(1.6)
    assert written[5]["seen_energy"] == pytest.approx(-6.0)


class TaggedAtoms(Atoms):
    """A structure class of the user's own."""


def test_celldisp_class_constraints_and_calculator_parameters_count():
    base = Atoms("Cu2", positions=[[0, 0, 0], [1, 1, 1]], cell=[3, 3, 3], pbc=True)
    variants = [base.copy() for _ in range(4)]
    variants[0].set_celldisp([0.5, 0, 0])
    variants[1] = TaggedAtoms(base)
    from ase.constraints import FixAtoms
    variants[2].set_constraint(FixAtoms(indices=list(range(2))))
    variants[3].calc = SinglePointCalculator(variants[3], energy=1.0)
    keys = [fingerprint(base)] + [fingerprint(v) for v in variants]
    assert len(set(keys)) == len(keys)
    # and a long constraint is hashed by its indices, not by a shortened repr
    many = [Atoms("H2000", positions=np.zeros((2000, 3))) for _ in range(2)]
    many[0].set_constraint(FixAtoms(indices=list(range(1500))))
    many[1].set_constraint(FixAtoms(indices=list(range(1499)) + [1600]))
    assert fingerprint(many[0]) != fingerprint(many[1])


# --- 2. the key follows what the op reaches ----------------------------------------------------

DRIVER = textwrap.dedent("""
    import os, uuid
    from pathlib import Path
    from wfl_like import ConfigSet, OutputSpec
    from wfl_like.autoparallelize import autoparallelize
    import scaling
    from shifts import shift
    from model import Model

    # computed at run time: it counts by the value it has
    SCALE = float(os.environ.get("TRUST_SCALE", "1.0"))


    def op(items, markers):
        outputs = []
        for atoms in items:
            (Path(markers) / f"{atoms.info['label']}-{uuid.uuid4().hex}").touch()
            value = scaling.scaled(SCALE * float(atoms.positions.sum()))
            atoms.info["value"] = Model().apply(shift(value))
            outputs.append(atoms)
        return outputs


    if __name__ == "__main__":
        # SETTINGS
        autoparallelize(op, ConfigSet("INPUT"), OutputSpec("out.xyz"), "markers",
                        autopara_info={"num_python_subprocesses": NPROC, "num_inputs_per_python_subprocess": 2})
""")

SCALING = "FACTOR = 2.0\n\n\ndef scaled(x):\n    return FACTOR * _inner(x)\n\n\ndef _inner(x):\n    return x\n\n\n" \
          "def unused():\n    return 'UNUSED'\n"
SHIFTS = "OFFSET = 0.5\n\n\ndef shift(x):\n    return x + OFFSET\n"
# a class-level lock: no content to hash, so it counts by its module's text (this one's)
MODEL = "import threading\n\n\nclass Model:\n    _lock = threading.Lock()\n    bias = 0.0\n\n" \
        "    def apply(self, x):\n        with self._lock:\n            return x + self.bias\n"


def write_project(directory, driver=DRIVER, scaling=SCALING, shifts=SHIFTS, model=MODEL,
                  nproc="2", settings="# SETTINGS", input_name="input.xyz"):
    (directory / "driver.py").write_text(driver.replace("NPROC", nproc).replace("# SETTINGS", settings)
                                         .replace("INPUT", input_name))
    (directory / "scaling.py").write_text(scaling)
    (directory / "shifts.py").write_text(shifts)
    (directory / "model.py").write_text(model)


def run_driver(directory, **env):
    # no .pyc: a module rewritten within the same second must be read afresh
    env = driver_env(PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(directory), **env)
    result = subprocess.run([sys.executable, "driver.py"], cwd=directory, env=env, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr


def values(path):
    return [(int(a.info["label"]), round(a.info["value"], 9)) for a in ase.io.read(path, ":")]


def expected_values(inputs, factor=2.0, scale=1.0, offset=0.5, bias=0.0):
    return [(int(a.info["label"]), round(factor * scale * float(a.positions.sum()) + offset + bias, 9))
            for a in ase.io.read(inputs, ":")]


@pytest.mark.timeout(600)
def test_key_follows_constants_helpers_and_classes_the_op_reaches_not_unrelated_edits(tmp_path):
    project = tmp_path / "project"
    (project / "markers").mkdir(parents=True)
    rng = np.random.default_rng(2)
    inputs = project / "input.xyz"
    ase.io.write(inputs, [Atoms("Cu2", positions=rng.random((2, 3)) * 3, cell=[4, 4, 4], pbc=True,
                                info={"label": i}) for i in range(N_ITEMS)], format="extxyz")
    markers, out = project / "markers", project / "out.xyz"
    write_project(project)
    run_driver(project, PYTHONHASHSEED="1")
    assert computed(markers) == Counter({label: 1 for label in range(N_ITEMS)})
    assert values(out) == expected_values(inputs)

    # unrelated edits, another process and hash seed: the op reaches none of this
    (project / "renamed.xyz").write_bytes(inputs.read_bytes())
    write_project(project, nproc="1", settings="# a comment\n    print('starting')", input_name="renamed.xyz",
                  scaling=SCALING.replace("'UNUSED'", "'STILL UNUSED'"),
                  driver=DRIVER.replace("import os, uuid", "import os, uuid\nUNRELATED = 7"))
    run_driver(project, PYTHONHASHSEED="2")
    assert sum(computed(markers).values()) == N_ITEMS
    assert values(out) == expected_values(inputs)

    # each run changes one thing (the others back as they were)
    changes = [  # (what changed, project files, environment, expected values)
        ("a constant of the op's module, computed from the environment", {}, {"TRUST_SCALE": "3"}, {"scale": 3.0}),
        ("a constant read by a helper imported with from-import", {"shifts": SHIFTS.replace("0.5", "0.75")},
         {}, {"offset": 0.75}),
        ("a helper's helper in a module used as module.name",
         {"scaling": SCALING.replace("return x\n", "return x + 1.0\n")}, {}, {"offset": 2.5}),
        ("a class attribute of a local class", {"model": MODEL.replace("bias = 0.0", "bias = 0.125")}, {},
         {"bias": 0.125}),
    ]
    for n_runs, (what, files, env, expect) in enumerate(changes, start=2):
        write_project(project, **files)
        run_driver(project, **env)
        assert computed(markers) == Counter({label: n_runs for label in range(N_ITEMS)}), what
        assert values(out) == expected_values(inputs, **expect), what


# values a helper module keeps for itself (a memo) are its state, not what it is given
_MEMO = {}


def memo_op(atoms_list, markers):
    outputs = []
    for atoms in atoms_list:
        mark(markers, atoms.info["label"])
        _MEMO[atoms.info["label"]] = float(atoms.positions.sum())
        atoms.info["value"] = _MEMO[atoms.info["label"]]
        outputs.append(atoms)
    return outputs


def test_a_memo_the_op_writes_does_not_change_its_key(tmp_path, markers):
    inputs, out = tmp_path / "in.xyz", tmp_path / "out.xyz"
    ase.io.write(inputs, [Atoms("Cu", positions=[[0, 0, i]], info={"label": i}) for i in range(N_ITEMS)])
    for _ in range(2):
        autoparallelize(memo_op, ConfigSet(inputs), OutputSpec(out), markers, autopara_info=para())
    assert sum(computed(markers).values()) == N_ITEMS


def test_modules_are_classified_local_installed_or_standard_library():
    assert module_origin(__name__) == LOCAL
    assert module_origin("ase.io") == INSTALLED
    assert module_origin("numpy") == INSTALLED
    assert module_origin("json") == STDLIB and module_origin("builtins") == STDLIB


# --- cache_extra: files the op reads by path ------------------------------------------------------

def model_op(atoms_list, markers, model_path):
    """Scales each structure by a factor read from a model file (which the journal cannot see)."""
    factor = float(Path(model_path).read_text())
    outputs = []
    for atoms in atoms_list:
        mark(markers, atoms.info["label"])
        atoms.info["value"] = factor * float(atoms.positions.sum())
        outputs.append(atoms)
    return outputs


def test_a_model_file_named_in_cache_extra_rewritten_in_place_recomputes(tmp_path, markers):
    inputs, out, model = tmp_path / "in.xyz", tmp_path / "out.xyz", tmp_path / "model.txt"
    ase.io.write(inputs, [Atoms("Cu", positions=[[0, 0, 1 + i]], info={"label": i}) for i in range(N_ITEMS)])
    model.write_text("2.0")
    info = para(2, 2, cache_extra={"model": model, "version": "v1"})
    for n_runs, factor in ((1, "2.0"), (1, "2.0"), (2, "5.0")):
        model.write_text(factor)          # rewritten in place: same path
        autoparallelize(model_op, ConfigSet(inputs), OutputSpec(out), markers, str(model), autopara_info=info)
        assert computed(markers) == Counter({label: n_runs for label in range(N_ITEMS)})
        assert [a.info["value"] for a in ase.io.read(out, ":")] == [float(factor) * (1 + i) for i in range(N_ITEMS)]


def test_a_missing_cache_extra_path_fails_before_any_work_naming_it(tmp_path, markers):
    inputs, out = tmp_path / "in.xyz", tmp_path / "out.xyz"
    ase.io.write(inputs, [Atoms("Cu", info={"label": 0})])
    missing = tmp_path / "no-such-model.pt"
    with pytest.raises(FileNotFoundError, match="no-such-model.pt"):
        autoparallelize(model_op, ConfigSet(inputs), OutputSpec(out), markers, str(missing),
                        autopara_info=para(cache_extra=[missing]))
    assert not any(markers.iterdir()) and not out.exists() and not journal_path(out).exists()


def test_cache_extra_directories_count_by_names_and_contents(tmp_path):
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "weights.bin").write_bytes(b"\0\1\2")
    (model / "sub" / "config.json").write_text(json.dumps({"cutoff": 5.0}))
    first = fingerprint_extra([model, "v1"])
    assert fingerprint_extra([model, "v1"]) == first
    (model / "sub" / "config.json").write_text(json.dumps({"cutoff": 6.0}))
    second = fingerprint_extra([model, "v1"])
    (model / "sub" / "config.json").rename(model / "sub" / "other.json")
    third = fingerprint_extra([model, "v1"])
    assert len({first, second, third, fingerprint_extra([model, "v2"])}) == 4
    # a path counts by what it holds; the same text as a plain string is a value
    assert fingerprint_extra(str(model)) != fingerprint_extra(model)


# --- 17. an argument with no content to hash --------------------------------------------------------

class Scaler:
    """Holds a lock beside the number that defines it."""

    def __init__(self, factor):
        self.factor = factor
        self.guard = {"lock": threading.Lock()}


class PicklableScaler(Scaler):
    def __getstate__(self):
        return {"factor": self.factor}


def scaler_op(atoms_list, markers, scaler):
    outputs = []
    for atoms in atoms_list:
        mark(markers, atoms.info["label"])
        with scaler.guard["lock"]:
            atoms.info["value"] = scaler.factor * float(atoms.positions.sum())
        outputs.append(atoms)
    return outputs


def test_an_argument_holding_a_lock_fails_before_any_work_naming_it_and_what_to_do(tmp_path, markers):
    inputs, out = tmp_path / "in.xyz", tmp_path / "out.xyz"
    ase.io.write(inputs, [Atoms("Cu", positions=[[0, 0, 1 + i]], info={"label": i}) for i in range(N_ITEMS)])
    with pytest.raises(TypeError) as raised:
        autoparallelize(scaler_op, ConfigSet(inputs), OutputSpec(out), markers, Scaler(2.0), autopara_info=para())
    message = str(raised.value)
    assert "argument 'scaler' (args[1], given by position)" in message and ".guard['lock']" in message
    assert "_thread.lock" in message and f"{__name__}.Scaler" in message
    assert "__getstate__" in message and "cache=False" in message
    assert not any(markers.iterdir()) and not out.exists() and not journal_path(out).exists()

    with pytest.raises(TypeError, match="keyword argument 'scaler'"):
        autoparallelize(scaler_op, ConfigSet(inputs), OutputSpec(out), markers, scaler=Scaler(2.0),
                        autopara_info=para())

    # either remedy the message gives works: no journal, or a __getstate__ (then reruns reuse)
    autoparallelize(scaler_op, ConfigSet(inputs), OutputSpec(out), markers, Scaler(2.0),
                    autopara_info=para(cache=False))
    assert sum(computed(markers).values()) == N_ITEMS
    out.unlink()
    for factor, n_runs in ((2.0, 2), (2.0, 2), (3.0, 3)):
        autoparallelize(scaler_op, ConfigSet(inputs), OutputSpec(out), markers, PicklableScaler(factor),
                        autopara_info=para())
        assert computed(markers) == Counter({label: n_runs for label in range(N_ITEMS)})


_GLOBAL_LOCK = threading.Lock()


def op_reading_a_global_lock(atoms_list, markers):
    with _GLOBAL_LOCK:
        for atoms in atoms_list:
            mark(markers, atoms.info["label"])
        return atoms_list


def nesting_op(atoms_list, markers):
    """Calls an autoparallelized operation itself (the engine's own module-level locks are reached)."""
    return autoparallelize(memo_op, atoms_list, None, markers, autopara_info=para())


@pytest.mark.parametrize("op", [op_reading_a_global_lock, nesting_op])
def test_a_module_level_lock_the_op_reaches_counts_by_its_module_source(tmp_path, markers, op):
    inputs, out = tmp_path / "in.xyz", tmp_path / "out.xyz"
    ase.io.write(inputs, [Atoms("Cu", positions=[[0, 0, i]], info={"label": i}) for i in range(N_ITEMS)])
    out.write_text("")
    for _ in range(2):
        out.unlink()      # no whole-run shortcut: every item is looked up by its key
        autoparallelize(op, ConfigSet(inputs), OutputSpec(out), markers, autopara_info=para())
    assert sum(computed(markers).values()) == N_ITEMS


class LockedOp:
    """An operation object that holds a lock beside its settings."""

    def __init__(self):
        self.scale = 2.0
        self.lock = threading.RLock()

    def __call__(self, atoms_list):
        return atoms_list


def test_an_operation_object_holding_a_lock_is_named_as_the_operation():
    with pytest.raises(TypeError) as raised:
        fingerprint_call(LockedOp(), (), {})
    message = str(raised.value)
    assert "the operation" in message and "at .lock" in message and f"{__name__}.LockedOp" in message


def test_a_long_chain_of_local_helpers_is_followed_to_its_end(tmp_path, monkeypatch):
    """Code is walked breadth first, not by recursion: 2,000 helpers deep, the last one counts."""
    import importlib
    n = 2000
    chain = "".join(f"def f{i}(x):\n    return f{i + 1}(x)\n\n\n" for i in range(n))
    monkeypatch.syspath_prepend(str(tmp_path))
    keys = []
    for last in ("x", "x + 1"):
        (tmp_path / "deep_chain.py").write_text(chain + f"def f{n}(x):\n    return {last}\n")
        sys.modules.pop("deep_chain", None)
        importlib.invalidate_caches()
        module = importlib.import_module("deep_chain")
        keys.append(fingerprint_call(module.f0, (), {}))
    sys.modules.pop("deep_chain", None)
    assert keys[0] != keys[1]


class ScaledPotential:
    """A calculator of the ML kind: its "model" (a scale) is kept outside ``parameters``."""

    implemented_properties = ["energy"]

    def __init__(self, scale):
        self.parameters = {}
        self.results = {}
        self.atoms = None
        self.model_scale = scale

    def get_property(self, name, atoms=None, allow_calculation=True):
        return self.model_scale * len(atoms)

    def reset(self):
        self.results = {}

    def calculate(self, atoms, properties, system_changes):
        self.results = {"energy": self.model_scale * len(atoms)}


def test_a_calculator_instance_whose_model_changed_recomputes(tmp_path):
    from wfl_like.calculators.generic import calculate

    structures = [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]]) for _ in range(2)]
    first = calculate(structures, OutputSpec(tmp_path / "out.xyz"), ScaledPotential(1.0),
                      properties=["energy"], output_prefix="ml_")
    assert [atoms.info["ml_energy"] for atoms in first] == [2.0, 2.0]
    again = calculate(structures, OutputSpec(tmp_path / "out.xyz"), ScaledPotential(5.0),
                      properties=["energy"], output_prefix="ml_")
    assert [atoms.info["ml_energy"] for atoms in again] == [10.0, 10.0]


def test_ase_calculators_still_count_by_class_and_parameters_only():
    from ase.calculators.emt import EMT

    used = EMT()
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.5]], cell=[6, 6, 6], pbc=True)
    atoms.calc = used
    atoms.get_potential_energy()      # fills the calculator's caches and results
    assert fingerprint(used) == fingerprint(EMT())
