"""What the journal buys on reruns, measured side by side in one run.

1. A first run over N structures (file to file), then a rerun with nothing changed: the
   rerun should return at once, the input being recognised by its bytes.
2. A run killed (SIGKILL) when its operation has done half of the items, then resumed: the
   resume should cost about half of a full run (goal: at most 0.55 of it).

Only the public API and the ``wfl-like status`` command are used, so the script keeps
working while the engine and its journal change underneath.

Run from the repository root:  python benchmarks/bench_cache.py [--quick]
"""

import argparse
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import ase
import numpy as np

DRIVER = textwrap.dedent("""
    import logging, sys, time
    from wfl_like import ConfigSet, OutputSpec
    from wfl_like.autoparallelize import autoparallelize

    logging.basicConfig(level=logging.WARNING)

    def work(items, seconds):
        # a stand-in for a calculation: a fixed cost per item
        deadline = time.perf_counter() + seconds * len(items)
        while time.perf_counter() < deadline:
            pass
        for atoms in items:
            atoms.info["done"] = True
        # how far the run got, for the benchmark to kill it half way: one short line per
        # chunk, appended (atomic at this size) to a file in the run's directory
        with open("progress.txt", "a") as progress:
            progress.write(f"{len(items)}\\n")
        return items

    if __name__ == "__main__":
        source, target, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
        autoparallelize(work, ConfigSet(source), OutputSpec(target), seconds,
                        autopara_info={"num_python_subprocesses": 2, "num_inputs_per_python_subprocess": 50})
""")


def write_input(path, n):
    from ase import Atoms
    import ase.io

    rng = np.random.default_rng(0)
    structures = []
    for i in range(n):
        atoms = Atoms("CuCu", positions=rng.normal(size=(2, 3)) + [[0, 0, 0], [1.8, 0, 0]], cell=[4, 4, 4], pbc=True)
        atoms.info["label"] = i
        structures.append(atoms)
    ase.io.write(path, structures, format="extxyz")


def run_driver(workdir, seconds, kill_when=None):
    """Run the driver to the end (returns its wall time), or SIGKILL it and its workers once
    its operation has done ``kill_when`` items."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "driver.py", "in.xyz", "out.xyz", str(seconds)], cwd=workdir,
                            start_new_session=True)
    if kill_when is None:
        if proc.wait() != 0:
            raise RuntimeError(f"the driver in {workdir} failed (exit {proc.returncode})")
        return time.perf_counter() - start
    while proc.poll() is None:
        if items_done(workdir) >= kill_when:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return time.perf_counter() - start
        time.sleep(0.02)
    raise RuntimeError("the driver finished before it could be killed; use more items or a longer cost")


def items_done(workdir):
    """Items the operation has finished so far (journaled or about to be)."""
    progress = workdir / "progress.txt"
    if not progress.exists():
        return 0
    # a line being appended may be caught half-written: count whole lines only
    return sum(int(line) for line in progress.read_text().split("\n")[:-1])


def journaled(workdir):
    """Items the journal of ``workdir/out.xyz`` holds as done, as ``wfl-like status`` tells
    (None where it cannot tell)."""
    status = subprocess.run([sys.executable, "-c", "import sys; from wfl_like.cli import main; sys.exit(main())",
                             "status", "out.xyz"], cwd=workdir, capture_output=True, text=True)
    found = re.search(r"items:\s+(\d+) done", status.stdout)
    return int(found.group(1)) if found else None


def new_workdir(path, template):
    """A directory holding the driver and a copy of the input file."""
    path.mkdir()
    (path / "driver.py").write_text(DRIVER)
    shutil.copyfile(template, path / "in.xyz")
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5,000 structures instead of 50,000")
    parser.add_argument("--n", type=int, default=None, help="number of structures")
    parser.add_argument("--cost", type=float, default=0.001, help="seconds of work per item (default 0.001)")
    args = parser.parse_args()
    n = args.n or (5_000 if args.quick else 50_000)

    print(f"wfl_like cache benchmark -- {platform.node()} ({platform.system()} {platform.machine()}), "
          f"os.cpu_count()={os.cpu_count()}, load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"python {platform.python_version()}, ase {ase.__version__}, numpy {np.__version__}; "
          f"{n} structures, {args.cost * 1e3:g} ms of work per item, 2 workers, chunks of 50")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = tmp / "in.xyz"
        write_input(source, n)
        full, resumed, floor_dir = (new_workdir(tmp / name, source) for name in ("full", "resumed", "floor"))

        floor = run_driver(floor_dir, 0.0)
        first = run_driver(full, args.cost)
        rerun = run_driver(full, args.cost)
        print("\n[1] rerun with nothing changed")
        print(f"    first run              {first:8.2f} s")
        print(f"    rerun (all cached)     {rerun:8.2f} s   ({rerun / first:.3f} of the first run; "
              f"includes starting Python and importing ase)")
        print(f"    (the same run with no work per item, i.e. reading, writing and starting up: {floor:.2f} s:"
              f" a resume cannot cost less)")

        killed_after = run_driver(resumed, args.cost, kill_when=n // 2)
        done_at_kill = journaled(resumed)
        computed_before = items_done(resumed)
        resume = run_driver(resumed, args.cost)
        recomputed = items_done(resumed) - computed_before
        same = (resumed / "out.xyz").read_bytes() == (full / "out.xyz").read_bytes()
        print("\n[2] SIGKILL at 50 %, then resume")
        print(f"    killed after           {killed_after:8.2f} s   "
              f"({'?' if done_at_kill is None else done_at_kill} of {n} items journaled)")
        print(f"    resume                 {resume:8.2f} s   ({resume / first:.2f} of a full run; "
              f"the operation ran on {recomputed} items)")
        print(f"    killed + resume        {killed_after + resume:8.2f} s   ({(killed_after + resume) / first:.2f} "
              f"of a full run)")
        print(f"    output identical to the uninterrupted run: {'yes' if same else 'NO'}")

        print("\nratios:")
        print(f"    cached rerun / first run        {rerun / first:6.3f}x")
        ratio = resume / first
        verdict = "met" if ratio <= 0.55 else "not met"
        print(f"    resume / full run               {ratio:6.2f}x   (goal <= 0.55x: {verdict})")
        print(f"    floor (no work) / full run      {floor / first:6.2f}x   (the part of a resume no journal can save)")


if __name__ == "__main__":
    main()
