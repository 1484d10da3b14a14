"""MD under a real ``mpiexec -n 3`` (WFL_MPIPOOL) gives, byte for byte, the trajectories of a serial run.

Under MPI, ASE's default communicator is the MPI world: velocities and Langevin noise
drawn with it on one worker rank would wait for a broadcast from rank 0.  md gives ASE a
communicator of its own process instead.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from helpers import BIN, MPIEXEC

pytest.importorskip("mpi4py")
pytest.importorskip("mpipool")

RUN_TIMEOUT = 240
pytestmark = [pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (install the mpi extra)"),
              pytest.mark.timeout(3 * RUN_TIMEOUT)]

DRIVER = textwrap.dedent("""
    import sys
    from wfl_like.autoparallelize import mpipool_support
    mpipool_support.init()

    import numpy as np
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from wfl_like import ConfigSet, OutputSpec
    from wfl_like.generate.md import md

    cells = []
    for seed in range(4):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
        atoms.rattle(stdev=0.02, seed=seed)
        cells.append(atoms)
    md(ConfigSet(cells), OutputSpec(sys.argv[1] + ".xyz"), (EMT, [], {}), steps=10, dt=2.0, integrator="Langevin",
       temperature=500.0, temperature_tau=20.0, traj_step_interval=5, rng=np.random.default_rng(3))
""")


def run(args, cwd, mpi):
    env = {k: v for k, v in os.environ.items() if k not in ("WFL_MPIPOOL", "WFL_NUM_PYTHON_SUBPROCESSES")}
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    if mpi:
        env["WFL_MPIPOOL"] = "1"
        args = [MPIEXEC, "-n", "3"] + args
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)


def test_md_under_mpiexec_gives_the_serial_trajectories(tmp_path):
    (tmp_path / "driver.py").write_text(DRIVER)
    serial = run([sys.executable, "driver.py", "serial"], tmp_path, mpi=False)
    assert serial.returncode == 0, serial.stderr
    mpi = run([sys.executable, "driver.py", "mpi"], tmp_path, mpi=True)
    assert mpi.returncode == 0, mpi.stderr
    text = (tmp_path / "serial.xyz").read_text()
    assert text.count("MD_step=") == 4 * 3
    assert (tmp_path / "mpi.xyz").read_text() == text
