"""Runs under a real ``mpiexec -n 3`` give, byte for byte, the outputs of a serial run."""

import ast
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mpi4py")
pytest.importorskip("mpipool")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "data" / "cu_rattled.xyz"
BIN = os.path.dirname(sys.executable)
MPIEXEC = shutil.which("mpiexec", path=BIN + os.pathsep + os.environ.get("PATH", ""))
pytestmark = [pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (install the mpi extra)"),
              pytest.mark.timeout(180)]

DRIVER = textwrap.dedent("""
    import sys
    from wfl_like.autoparallelize import mpipool_support
    mpipool_support.init()

    import numpy as np
    from ase.calculators.emt import EMT
    from wfl_like import ConfigSet, OutputSpec
    from wfl_like.autoparallelize import autoparallelize
    from wfl_like.calculators.generic import calculate


    def rattle(items, _autopara_per_item_info=None):
        for atoms, item in zip(items, _autopara_per_item_info):
            atoms.positions += item["rng"].normal(scale=0.01, size=atoms.positions.shape)
        return items


    def refuse_5(items):
        for atoms in items:
            if atoms.info["structure_id"] == 5:
                raise ValueError("structure 5 is refused")
        return items


    source, tag = sys.argv[1], sys.argv[2]
    calculate(ConfigSet(source), OutputSpec(tag + "_emt.xyz"), (EMT, [], {}),
              autopara_info={"num_inputs_per_python_subprocess": 3})
    autoparallelize(rattle, ConfigSet(source), OutputSpec(tag + "_rng.xyz"), rng=np.random.default_rng(5),
                    autopara_info={"num_inputs_per_python_subprocess": 2})
    result = autoparallelize(refuse_5, ConfigSet(source), OutputSpec(tag + "_skip.xyz"),
                             autopara_info={"errors": "skip"})
    print("failures", [f.index for f in result.failures], flush=True)

    # the initializer runs once in each process that computes (each worker rank under MPI),
    # and a process count asked for is ignored there, with a warning
    import os
    from wfl_like.autoparallelize import mpipool_support as support

    def setup(directory):
        open(os.path.join(directory, f"init-{os.getpid()}"), "w").close()

    def where(items):
        for atoms in items:
            atoms.info["pid"] = os.getpid()
        return items

    os.makedirs(tag + "_init", exist_ok=True)
    placed = autoparallelize(where, ConfigSet(source), OutputSpec(), autopara_info={
        "initializer": (setup, [tag + "_init"]), "num_python_subprocesses": 4 if support.active_executor() else 0})
    print("pids", sorted({atoms.info["pid"] for atoms in placed}), "rank0", os.getpid(), flush=True)
    print("inits", sorted(int(name.split("-")[1]) for name in os.listdir(tag + "_init")), flush=True)
""")


def run(args, cwd, mpi):
    env = {k: v for k, v in os.environ.items() if k not in ("WFL_MPIPOOL", "WFL_NUM_PYTHON_SUBPROCESSES")}
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    if mpi:
        env["WFL_MPIPOOL"] = "1"
        args = [MPIEXEC, "-n", "3"] + args
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=170)


def test_script_under_mpiexec_gives_the_serial_outputs(tmp_path):
    (tmp_path / "driver.py").write_text(DRIVER)
    serial = run([sys.executable, "driver.py", str(EXAMPLE), "serial"], tmp_path, mpi=False)
    assert serial.returncode == 0, serial.stderr
    mpi = run([sys.executable, "driver.py", str(EXAMPLE), "mpi"], tmp_path, mpi=True)
    assert mpi.returncode == 0, mpi.stderr
    for kind in ("emt", "rng", "skip"):
        assert (tmp_path / f"mpi_{kind}.xyz").read_bytes() == (tmp_path / f"serial_{kind}.xyz").read_bytes(), kind
    # only rank 0 ran the script after init(): one line of output, with the failure record
    assert mpi.stdout.count("failures") == 1 and "failures [5]" in mpi.stdout
    lines = {line.split()[0]: line for line in mpi.stdout.splitlines()}
    pids = ast.literal_eval(lines["pids"].split("rank0")[0].split(" ", 1)[1])
    rank0 = int(lines["pids"].split("rank0")[1])
    inits = ast.literal_eval(lines["inits"].split(" ", 1)[1])
    assert rank0 not in pids and len(pids) == 2           # the two worker ranks computed
    assert inits == pids                                  # one initializer run in each
    assert "num_python_subprocesses=4 is ignored" in mpi.stderr


def test_command_line_under_mpiexec_gives_the_serial_output(tmp_path):
    wfl_like = os.path.join(BIN, "wfl-like")
    serial = run([wfl_like, "calculate", str(EXAMPLE), "-o", "serial.xyz", "-q"], tmp_path, mpi=False)
    assert serial.returncode == 0, serial.stderr
    mpi = subprocess.run([MPIEXEC, "-n", "3", wfl_like, "calculate", str(EXAMPLE), "-o", "mpi.xyz", "-q", "--mpi"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=170,
                         env={**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", "")})
    assert mpi.returncode == 0, mpi.stderr
    assert (tmp_path / "mpi.xyz").read_bytes() == (tmp_path / "serial.xyz").read_bytes()


SLOW_DRIVER = textwrap.dedent("""
    import os, sys, time, uuid
    from wfl_like.autoparallelize import mpipool_support
    mpipool_support.init()

    import numpy as np
    from wfl_like import ConfigSet, OutputSpec
    from wfl_like.autoparallelize import autoparallelize


    def slow_rattle(items, markers, _autopara_per_item_info=None):
        for atoms, item in zip(items, _autopara_per_item_info):
            time.sleep(0.1)
            atoms.positions += item["rng"].normal(scale=0.01, size=atoms.positions.shape)
            open(os.path.join(markers, f"{atoms.info['structure_id']}-{uuid.uuid4().hex}"), "w").close()
        return items


    source, out, markers = sys.argv[1], sys.argv[2], sys.argv[3]
    autoparallelize(slow_rattle, ConfigSet(source), OutputSpec(out), markers, rng=np.random.default_rng(9),
                    autopara_info={"num_inputs_per_python_subprocess": 2})
""")


def test_mpi_job_killed_midway_resumes_from_the_journal(tmp_path):
    import signal
    import time

    (tmp_path / "driver.py").write_text(SLOW_DRIVER)
    for name in ("markers", "reference_markers"):
        (tmp_path / name).mkdir()
    reference = run([sys.executable, "driver.py", str(EXAMPLE), "reference.xyz", "reference_markers"], tmp_path,
                    mpi=False)
    assert reference.returncode == 0, reference.stderr

    env = {k: v for k, v in os.environ.items() if k != "WFL_NUM_PYTHON_SUBPROCESSES"}
    env.update(WFL_MPIPOOL="1", PATH=BIN + os.pathsep + env.get("PATH", ""))
    job = subprocess.Popen([MPIEXEC, "-n", "3", sys.executable, "driver.py", str(EXAMPLE), "out.xyz", "markers"],
                           cwd=tmp_path, env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list((tmp_path / "markers").iterdir())) < 20 and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)          # the whole job, as a scheduler's wall-time kill
    job.wait()
    done_before = len(list((tmp_path / "markers").iterdir()))
    assert 20 <= done_before < 40
    assert not (tmp_path / "out.xyz").exists()

    resumed = run([sys.executable, "driver.py", str(EXAMPLE), "out.xyz", "markers"], tmp_path, mpi=True)
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "out.xyz").read_bytes() == (tmp_path / "reference.xyz").read_bytes()
    computed_again = len(list((tmp_path / "markers").iterdir())) - done_before
    # only what was not journaled is computed again: at most the chunks in flight at the kill
    assert 40 - done_before <= computed_again <= 40 - done_before + 8
