"""What the journal buys on reruns, measured side by side in one run.

1. A first run over N structures (file to file), then a rerun with nothing changed: the
   rerun should return at once, the input being recognised by its bytes.
2. A run killed (SIGKILL) when half of its items are journaled, then resumed: the resume
   should cost about half of a full run.

Run from the repository root:  python benchmarks/bench_cache.py [--quick]
"""

import argparse
import os
import platform
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


def run_driver(workdir, seconds, kill_when=None, n=None):
    """Run the driver to the end (returns its wall time), or SIGKILL it once ``kill_when`` items are journaled."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "driver.py", "in.xyz", "out.xyz", str(seconds)], cwd=workdir,
                            start_new_session=True)
    if kill_when is None:
        proc.wait()
        return time.perf_counter() - start
    journal = workdir / ".out.xyz.journal.sqlite"
    while proc.poll() is None:
        if journaled(journal) >= kill_when:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return time.perf_counter() - start
        time.sleep(0.05)
    raise RuntimeError("the driver finished before it could be killed; use more items or a longer cost")


def _prepare(workdir, template):
    workdir.mkdir()
    (workdir / "driver.py").write_text(DRIVER)
    (workdir / "in.xyz").write_bytes((template / "in.xyz").read_bytes())
    return True


def journaled(journal):
    import sqlite3

    if not journal.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM items WHERE status='done'").fetchone()[0]
    except sqlite3.Error:
        return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5,000 structures instead of 50,000")
    parser.add_argument("--n", type=int, default=None, help="number of structures")
    parser.add_argument("--cost", type=float, default=0.001, help="seconds of work per item (default 0.001)")
    args = parser.parse_args()
    n = args.n or (5_000 if args.quick else 50_000)

    print(f"wfl_like cache benchmark -- {platform.node()} ({platform.system()} {platform.machine()}), "
          f"os.cpu_count()={os.cpu_count()}, python {platform.python_version()}, ase {ase.__version__}, "
          f"numpy {np.__version__}; {n} structures, {args.cost * 1e3:g} ms of work per item, 2 workers")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        full, resumed = tmp / "full", tmp / "resumed"
        for workdir in (full, resumed):
            workdir.mkdir()
            (workdir / "driver.py").write_text(DRIVER)
        write_input(full / "in.xyz", n)
        (resumed / "in.xyz").write_bytes((full / "in.xyz").read_bytes())

        floor = run_driver(tmp / "floor", 0.0) if _prepare(tmp / "floor", full) else None
        first = run_driver(full, args.cost)
        rerun = run_driver(full, args.cost)
        print("\n[1] rerun with nothing changed")
        print(f"    first run              {first:8.2f} s")
        print(f"    rerun (all cached)     {rerun:8.2f} s   ({rerun / first:.3f} of the first run; "
              f"includes starting Python and importing ase)")

        killed_after = run_driver(resumed, args.cost, kill_when=n // 2)
        done_at_kill = journaled(resumed / ".out.xyz.journal.sqlite")
        resume = run_driver(resumed, args.cost)
        same = (resumed / "out.xyz").read_bytes() == (full / "out.xyz").read_bytes()
        print(f"    (the same run with no work per item, i.e. reading, writing and starting up: {floor:.2f} s:"
              f" a resume cannot cost less)")
        print("\n[2] SIGKILL at 50 %, then resume")
        print(f"    killed after           {killed_after:8.2f} s   ({done_at_kill} of {n} items journaled)")
        print(f"    resume                 {resume:8.2f} s   ({resume / first:.2f} of a full run)")
        print(f"    killed + resume        {killed_after + resume:8.2f} s   ({(killed_after + resume) / first:.2f} "
              f"of a full run)")
        print(f"    output identical to the uninterrupted run: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
