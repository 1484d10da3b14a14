"""An MD trajectory depends only on its structure and its own generator: the same frames whatever
the process count, chunk size, start method, and on reruns."""

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from wfl_like import ConfigSet, OutputSpec
from wfl_like.generate.md import md

from test_md import FailingEMT

EMT_SPEC = (EMT, [], {})
START_METHOD_ENV = "WFL_LIKE_START_METHOD"

# Langevin noise along a ramp; Langevin cell dynamics at a pressure drawn per structure
RUNS = {
    "langevin_ramp": {"integrator": "Langevin", "temperature": (800.0, 300.0, 2), "temperature_tau": 20.0},
    "baoab_random_pressure": {"integrator": "LangevinBAOAB", "temperature": 500.0, "temperature_tau": 20.0,
                              "pressure": ("uniform", 0.0, 2.0), "pressure_tau": 50.0},
}


def structures(n=5):
    cells = []
    for seed in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
        atoms.rattle(stdev=0.02, seed=seed)
        atoms.info["structure_id"] = seed
        cells.append(atoms)
    return cells


def state(frames):
    """Everything random about the frames, as exact bytes."""
    return [(f.info["MD_step"], f.positions.tobytes(), f.get_momenta().tobytes(), f.cell.array.tobytes(),
             f.info.get("MD_pressure_GPa")) for f in frames]


def run(tmp_path, name, settings, autopara_info, overwrite=False):
    output = OutputSpec(f"{name}.xyz", file_root=tmp_path, overwrite=overwrite)
    md(ConfigSet(structures()), output, EMT_SPEC, steps=12, dt=2.0, traj_step_interval=3,
       rng=np.random.default_rng(42), autopara_info=autopara_info, **settings)
    return state(ase.io.read(tmp_path / f"{name}.xyz", ":", parallel=False))


@pytest.mark.parametrize("settings", RUNS.values(), ids=RUNS.keys())
def test_trajectories_are_the_same_serial_in_workers_by_fork_or_spawn_and_on_a_rerun(tmp_path, monkeypatch,
                                                                                     settings):
    serial = run(tmp_path, "serial", settings, {"num_python_subprocesses": 0, "num_inputs_per_python_subprocess": 1})
    assert len(serial) == 5 * 5
    assert len({frame[1] for frame in serial}) == len(serial)     # the structures really differ
    forked = run(tmp_path, "fork", settings, {"num_python_subprocesses": 2, "num_inputs_per_python_subprocess": 3})
    monkeypatch.setenv(START_METHOD_ENV, "spawn")
    spawned = run(tmp_path, "spawn", settings, {"num_python_subprocesses": 2, "num_inputs_per_python_subprocess": 2})
    monkeypatch.delenv(START_METHOD_ENV)
    rerun = run(tmp_path, "serial", settings, {"num_python_subprocesses": 0}, overwrite=True)
    assert forked == serial
    assert spawned == serial
    assert rerun == serial


def test_structures_rerun_alone_after_a_chunk_mate_failed_give_their_own_trajectories(tmp_path):
    # Serial, from a file: the op is handed the file's structures themselves; when a chunk fails
    # its items are run again one by one, and must start again from where they started.
    inputs = structures(3)
    inputs[1].info["fail_from_step"] = 3
    ase.io.write(tmp_path / "in.xyz", inputs, parallel=False)
    common = {"steps": 6, "dt": 2.0, "temperature": 500.0, "temperature_tau": 20.0, "integrator": "Langevin",
              "skip_failures": False, "rng": np.random.default_rng(7)}
    split = md(ConfigSet(tmp_path / "in.xyz"), OutputSpec("split.xyz", file_root=tmp_path), (FailingEMT, [], {}),
               autopara_info={"num_python_subprocesses": 0, "num_inputs_per_python_subprocess": 3, "errors": "skip"},
               **common)
    common["rng"] = np.random.default_rng(7)
    alone = md(ConfigSet(tmp_path / "in.xyz"), OutputSpec("alone.xyz", file_root=tmp_path), (FailingEMT, [], {}),
               autopara_info={"num_python_subprocesses": 2, "num_inputs_per_python_subprocess": 1, "errors": "skip"},
               **common)
    assert [f.index for f in split.failures] == [f.index for f in alone.failures] == [1]
    assert state(split) == state(alone)
    assert len(state(split)) == 2 * 7
