"""Runs under a real ``mpiexec -n 3`` give, byte for byte, the outputs of a serial run."""

import ast
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import BIN, MPIEXEC, group_exists, wait_for, waiting_at
from wfl_like.autoparallelize.resume.journal import Journal, journal_path

pytest.importorskip("mpi4py")
pytest.importorskip("mpipool")

TESTS_DIR = Path(__file__).resolve().parent
EXAMPLE = TESTS_DIR.parent / "examples" / "data" / "cu_rattled.xyz"
# Each subprocess gets RUN_TIMEOUT; a test runs at most three of them in a row (plus a wait
# of as long for a condition), so the test's own limit is above their sum.
RUN_TIMEOUT = 240
pytestmark = [pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (install the mpi extra)"),
              pytest.mark.timeout(5 * RUN_TIMEOUT)]

DRIVER = textwrap.dedent("""
    import sys
    from wfl_like.autoparallelize import mpipool_support
    mpipool_support.init()

    import numpy as np
    from ase.calculators.emt import EMT
    from wfl_like import ConfigSet, OutputSpec
    from wfl_like.autoparallelize import autoparallelize
    from wfl_like.calculators.generic import calculate

    from backend_ops import rattle, refuse_5

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
    import os, time
    from wfl_like.autoparallelize import mpipool_support as support

    def setup(directory):
        open(os.path.join(directory, f"init-{os.getpid()}"), "w").close()

    def where(items, barrier, parties):
        # a barrier: no chunk ends before `parties` processes have each started one, so a
        # rank that would be quick enough to take every chunk is held until the other took one
        open(os.path.join(barrier, str(os.getpid())), "w").close()
        deadline = time.monotonic() + 300
        while len(os.listdir(barrier)) < parties:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{parties} processes did not reach the barrier in 300 s")
            time.sleep(0.05)
        for atoms in items:
            atoms.info["pid"] = os.getpid()
        return items

    os.makedirs(tag + "_init", exist_ok=True)
    os.makedirs(tag + "_barrier", exist_ok=True)
    executor = support.active_executor()
    placed = autoparallelize(where, ConfigSet(source), OutputSpec(), tag + "_barrier",
                             executor.size if executor else 1, autopara_info={
        "initializer": (setup, [tag + "_init"]), "num_python_subprocesses": 4 if executor else 0})
    print("pids", sorted({atoms.info["pid"] for atoms in placed}), "rank0", os.getpid(), flush=True)
    print("inits", sorted(int(name.split("-")[1]) for name in os.listdir(tag + "_init")), flush=True)
""")


def mpi_env(mpi):
    env = {k: v for k, v in os.environ.items() if k not in ("WFL_MPIPOOL", "WFL_NUM_PYTHON_SUBPROCESSES")}
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    # the drivers' ops use helpers.wait_for_release
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
    if mpi:
        env["WFL_MPIPOOL"] = "1"
    return env


def run(args, cwd, mpi):
    if mpi:
        args = [MPIEXEC, "-n", "3"] + args
    return subprocess.run(args, cwd=cwd, env=mpi_env(mpi), capture_output=True, text=True, timeout=RUN_TIMEOUT)


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
    assert rank0 not in pids and len(pids) == 2           # both worker ranks computed (the barrier)
    assert inits == pids                                  # one initializer run in each
    assert "num_python_subprocesses=4 is ignored" in mpi.stderr


def test_command_line_under_mpiexec_gives_the_serial_output(tmp_path):
    wfl_like = os.path.join(BIN, "wfl-like")
    serial = run([wfl_like, "calculate", str(EXAMPLE), "-o", "serial.xyz", "-q"], tmp_path, mpi=False)
    assert serial.returncode == 0, serial.stderr
    mpi = subprocess.run([MPIEXEC, "-n", "3", wfl_like, "calculate", str(EXAMPLE), "-o", "mpi.xyz", "-q", "--mpi"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                         env={**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", "")})
    assert mpi.returncode == 0, mpi.stderr
    assert (tmp_path / "mpi.xyz").read_bytes() == (tmp_path / "serial.xyz").read_bytes()


# Items from MPI_GATE on wait for a release file, which the job that is killed never sees:
# it is killed holding exactly the items before the gate, however slowly it is scheduled.
N_MPI, MPI_GATE = 40, 20

GATED_DRIVER = textwrap.dedent(f"""
    import os, sys, uuid
    from wfl_like.autoparallelize import mpipool_support
    mpipool_support.init()

    import numpy as np
    from helpers import wait_for_release
    from wfl_like import ConfigSet, OutputSpec
    from wfl_like.autoparallelize import autoparallelize


    def gated_rattle(items, markers, release, _autopara_per_item_info=None):
        for atoms, item in zip(items, _autopara_per_item_info):
            if item["item_i"] >= {MPI_GATE}:
                wait_for_release(release, item["item_i"])
            atoms.positions += item["rng"].normal(scale=0.01, size=atoms.positions.shape)
            open(os.path.join(markers, f"{{atoms.info['structure_id']}}-{{uuid.uuid4().hex}}"), "w").close()
        return items


    source, out, markers, release = sys.argv[1:5]
    autoparallelize(gated_rattle, ConfigSet(source), OutputSpec(out), markers, release,
                    rng=np.random.default_rng(9), autopara_info={{"num_inputs_per_python_subprocess": 2}})
""")


def journaled(out):
    """Items the journal of ``out`` holds as done, read as ``wfl-like status`` reads it."""
    if not journal_path(out).exists():
        return 0
    try:
        with Journal(journal_path(out), read_only=True) as journal:
            return journal.counts()["done"]
    except sqlite3.OperationalError:     # its writer holds it for a moment
        return 0


def mpich_shm_files():
    return {path.name for path in Path("/dev/shm").glob("mpich_shm_*")}


def in_use(path):
    """Whether a process has ``path`` open or mapped."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == str(path) for fd in (proc / "fd").iterdir()):
                return True
            if str(path) in (proc / "maps").read_text():
                return True
        except OSError:
            continue        # gone, or not ours to read
    return False


def test_mpi_job_killed_midway_resumes_from_the_journal(tmp_path):
    (tmp_path / "driver.py").write_text(GATED_DRIVER)
    for name in ("markers", "reference_markers"):
        (tmp_path / name).mkdir()
    # one path for every run: it is an argument of the op, so part of the cache key
    release = tmp_path / "release"
    # a job killed with SIGKILL leaves MPICH's shared memory segment behind
    shm_before = mpich_shm_files()
    stderr = tmp_path / "killed-stderr.txt"
    with open(stderr, "w") as stderr_file:
        job = subprocess.Popen([MPIEXEC, "-n", "3", sys.executable, "driver.py", str(EXAMPLE), "out.xyz", "markers",
                                str(release)], cwd=tmp_path, env=mpi_env(mpi=True), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=stderr_file)
    try:
        # both worker ranks hold a chunk from the gate on; every chunk before it is back and journaled
        assert wait_for(lambda: len(waiting_at(release)) == 2 or job.poll() is not None, RUN_TIMEOUT)
        assert wait_for(lambda: journaled(tmp_path / "out.xyz") >= MPI_GATE or job.poll() is not None, RUN_TIMEOUT)
        assert job.poll() is None, f"the job ended before it was killed:\n{stderr.read_text()}"
        os.killpg(job.pid, signal.SIGKILL)          # the whole job, as a scheduler's wall-time kill
        job.wait()
        assert wait_for(lambda: not group_exists(job.pid), 60), "ranks outlived the killed job"
        done_before = sorted(int(p.name.split("-")[0]) for p in (tmp_path / "markers").iterdir())
        assert done_before == list(range(MPI_GATE))
        assert journaled(tmp_path / "out.xyz") == MPI_GATE
        assert not (tmp_path / "out.xyz").exists()

        release.touch()
        reference = run([sys.executable, "driver.py", str(EXAMPLE), "reference.xyz", "reference_markers",
                         str(release)], tmp_path, mpi=False)
        assert reference.returncode == 0, reference.stderr
        resumed = run([sys.executable, "driver.py", str(EXAMPLE), "out.xyz", "markers", str(release)], tmp_path,
                      mpi=True)
        assert resumed.returncode == 0, resumed.stderr
        assert (tmp_path / "out.xyz").read_bytes() == (tmp_path / "reference.xyz").read_bytes()
        # only what was not journaled is computed again: the items from the gate on, once each
        computed = sorted(int(p.name.split("-")[0]) for p in (tmp_path / "markers").iterdir())
        assert computed == list(range(N_MPI))
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
        wait_for(lambda: not group_exists(job.pid), 60)
        for name in mpich_shm_files() - shm_before:
            path = Path("/dev/shm") / name
            if not in_use(path):        # another MPI job, started meanwhile, may be using its own
                path.unlink(missing_ok=True)


def test_wfl_mpipool_without_mpiexec_says_how_to_run_it(tmp_path):
    script = "from wfl_like.autoparallelize import mpipool_support\nmpipool_support.init()\n"
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=mpi_env(mpi=True), capture_output=True,
                          text=True, timeout=RUN_TIMEOUT)
    assert done.returncode != 0
    assert "RuntimeError: WFL_MPIPOOL is set but this MPI job has no rank besides rank 0" in done.stderr
    assert "mpiexec -n N" in done.stderr
