"""Chunk sizes: fixed sizes against ``num_inputs_per_python_subprocess="auto"``, side by side.

Two workloads on the local pool, outputs in memory, each run with chunks of 1 (wfl's
default), a hand-picked size, and ``"auto"``:

1. a cheap operation (sum of positions, a few microseconds per structure) over many
   2-atom structures: the round trip to a worker dominates with chunks of 1;
2. EMT over rattled 108-atom Cu cells (milliseconds each): chunks of 1 are fine, large
   fixed chunks leave a worker idle at the end.

It prints wall times and each time relative to the best fixed size of its workload.
Nothing passes or fails.  Run from the repository root::

    python benchmarks/bench_chunking.py            # ~1 min on 2 cores
    python benchmarks/bench_chunking.py --quick    # a few seconds
"""

import argparse
import platform
import time

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from wfl_like import OutputSpec
from wfl_like.autoparallelize import autoparallelize
from wfl_like.calculators.generic import calculate


def position_sum(items):
    for atoms in items:
        atoms.info["position_sum"] = float(atoms.positions.sum())
    return items


def small_structures(n):
    return [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7 + 1e-5 * i]], cell=[4, 4, 4], pbc=True) for i in range(n)]


def rattled_cu_cells(n, seed=1):
    base = bulk("Cu", "fcc", a=3.6, cubic=True) * (3, 3, 3)
    rng = np.random.default_rng(seed)
    cells = []
    for _ in range(n):
        atoms = base.copy()
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        cells.append(atoms)
    return cells


def timed(run):
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def cheap_run(inputs, workers, chunk):
    return lambda: autoparallelize(position_sum, inputs, OutputSpec(), autopara_info={
        "num_python_subprocesses": workers, "num_inputs_per_python_subprocess": chunk})


def emt_run(inputs, workers, chunk):
    return lambda: calculate(inputs, OutputSpec(), (EMT, (), {}), properties=["energy", "forces"],
                             autopara_info={"num_python_subprocesses": workers,
                                            "num_inputs_per_python_subprocess": chunk})


def compare(title, make_run, inputs, workers, sizes):
    print(f"\n{title}: {len(inputs)} structures, {workers} workers")
    times = {size: timed(make_run(inputs, workers, size)) for size in sizes}
    best_fixed = min(t for size, t in times.items() if size != "auto")
    for size, seconds in times.items():
        print(f"  chunk {str(size):>5}: {seconds:7.2f} s   {seconds / best_fixed:5.2f}x the best fixed size")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smaller inputs")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    print(f"Python {platform.python_version()}, {platform.machine()}")
    compare("cheap op (position sum)", cheap_run, small_structures(20_000 // scale), args.workers,
            [1, 100, 1000, "auto"])
    compare("EMT, 108-atom Cu", emt_run, rattled_cu_cells(120 // scale * 2), args.workers,
            [1, 10, 60, "auto"])


if __name__ == "__main__":
    main()
