"""What a queued job costs on top of its items: submission, start, collection (needs a Slurm cluster).

Runs calls with ``remote_info`` against the Slurm that answers on this machine (e.g. the
one-node cluster of ``tests/slurm/start_local_slurm.sh``) while a thread watches the
call's state directory every 10 ms, and prints, per call:

- ``sbatch``: from the call's start to the job ids in the registry (task files written,
  one sbatch);
- ``to first record``: from the job ids on record to each task's first item recorded
  (queueing, job start, Python and wfl_like imports, the first item), median and max;
- ``collection``: from the last item recorded to the call's return (the driver's poll,
  then storing and writing the outputs);

and, beside it, the same call run serially in this process.
"""

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent


def noop(items):
    return items


def emt_energy(items):
    """The EMT energy and forces of each structure, in its info and arrays."""
    from ase.calculators.emt import EMT

    for atoms in items:
        atoms.calc = EMT()
        atoms.info["emt_energy"] = atoms.get_potential_energy()
        atoms.arrays["emt_forces"] = atoms.get_forces()
        atoms.calc = None
    return items


def watch(state_dir, stop, seen):
    """Note when the registry first holds a job id and when each task's results first hold a record."""
    from wfl_like.autoparallelize.remote.results import read_results

    while not stop.is_set():
        now = time.monotonic()
        registry = state_dir / "jobs"
        if "jobs" not in seen and registry.exists() and b'"kind":"job"' in registry.read_bytes():
            seen["jobs"] = now
        for task_dir in state_dir.glob("task_*"):
            results = read_results(task_dir)
            if results.records:
                seen.setdefault(("first", task_dir.name), now)
            if results.done:
                seen.setdefault(("done", task_dir.name), now)
        time.sleep(0.01)


def run(op, n_items, per_job, workdir, label):
    import ase.io
    from wfl_like import ConfigSet, OutputSpec, autoparallelize
    from helpers import cu_cells

    workdir.mkdir()
    ase.io.write(workdir / "in.xyz", cu_cells(n_items))
    start = time.monotonic()
    autoparallelize(op, ConfigSet(workdir / "in.xyz"), OutputSpec(workdir / "serial.xyz"),
                    autopara_info={"num_python_subprocesses": 0})
    serial = time.monotonic() - start

    env = {"WFL_NUM_PYTHON_SUBPROCESSES": "0", "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent / "tests")])}
    remote = {"sys_name": "slurm", "job_name": f"bench_{uuid.uuid4().hex[:6]}",
              "resources": {"max_time": "10m", "num_cores": 1}, "num_inputs_per_queued_job": per_job,
              "check_interval": 0.5, "env_vars": env}
    stop, seen = threading.Event(), {}
    watcher = threading.Thread(target=watch, args=(workdir / ".out.xyz.journal.jobs", stop, seen), daemon=True)
    watcher.start()
    start = time.monotonic()
    autoparallelize(op, ConfigSet(workdir / "in.xyz"), OutputSpec(workdir / "out.xyz"),
                    autopara_info={"remote_info": remote})
    end = time.monotonic()
    stop.set()
    watcher.join()
    same = (workdir / "out.xyz").read_bytes() == (workdir / "serial.xyz").read_bytes()
    firsts = [t - seen["jobs"] for key, t in seen.items() if key[0] == "first"]
    dones = [t for key, t in seen.items() if key[0] == "done"]
    print(f"{label}: {n_items} items in {-(-n_items // per_job)} jobs")
    print(f"    sbatch                {seen['jobs'] - start:6.2f} s after the call began")
    print(f"    to first record       median {statistics.median(firsts):6.2f} s, max {max(firsts):6.2f} s")
    print(f"    collection            {end - max(dones):6.2f} s from the last task done to the call's return")
    print(f"    whole call            {end - start:6.2f} s queued, {serial:6.2f} s serial here; "
          f"output equals the serial output byte for byte: {'yes' if same else 'NO'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the one-item jobs")
    args = parser.parse_args()
    import shutil
    import subprocess

    if shutil.which("sbatch") is None or subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        print("no Slurm cluster answers here: run tests/slurm/start_local_slurm.sh (root) first")
        return 0
    sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    nodes = subprocess.run(["sinfo", "-h", "-o", "%D nodes, %c CPUs each"], capture_output=True, text=True)
    print(f"wfl_like queued-job overhead -- os.cpu_count()={os.cpu_count()}, load average {load}, "
          f"{nodes.stdout.strip()}")
    with tempfile.TemporaryDirectory() as tmp:
        run(noop, 4, 1, Path(tmp) / "noop", "no-op, one item per job")
        if not args.quick:
            run(emt_energy, 2000, 200, Path(tmp) / "emt", "EMT energy and forces (4-atom Cu cells)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
