"""Foundation benchmark: what the parallel machinery costs and what it buys.

Measured side by side in one run (no assertions, nothing passes or fails):

1. EMT over rattled 108-atom Cu cells with ``wfl_like.calculators.generic.calculate``:
   serial vs a pool of worker processes, outputs in memory, default chunk size (10);
   the speed-up, and whether both runs give identical energies.
2. A no-op operation over many 2-atom structures, to expose the per-item overhead:
   items/s serial and with the pool (chunks of 100 and of 1),
   (a) in memory (list -> ``OutputSpec()``) and
   (b) file to file (``ConfigSet(file)`` -> ``OutputSpec(file)``), against the floor
   set by ASE's own I/O (``ase.io.read(file, ":")`` + ``ase.io.write(out, list)``).

Run from the repository root::

    python benchmarks/bench_foundation.py            # full size, ~1-2 min on 2 cores
    python benchmarks/bench_foundation.py --quick    # scaled down, a few seconds
"""

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import ase
import ase.io
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from wfl_like import ConfigSet, OutputSpec
from wfl_like.autoparallelize import autoparallelize
from wfl_like.calculators.generic import calculate

SEED = 20240501


def noop(items):
    """The operation that does nothing: every input is its own output."""
    return items


# --- structures ----------------------------------------------------------------------

def rattled_cu_cells(n, seed=SEED, stdev=0.05):
    """``n`` copies of a 3x3x3 cubic Cu fcc supercell (108 atoms), each rattled differently."""
    base = bulk("Cu", "fcc", a=3.6, cubic=True) * (3, 3, 3)
    rng = np.random.default_rng(seed)
    cells = []
    for _ in range(n):
        atoms = base.copy()
        atoms.positions += rng.normal(scale=stdev, size=atoms.positions.shape)
        cells.append(atoms)
    return cells


def small_structures(n, seed=SEED):
    """``n`` 2-atom H2 molecules in a small periodic box, with varying bond lengths."""
    rng = np.random.default_rng(seed)
    bonds = 0.7 + 0.1 * rng.random(n)
    return [Atoms("H2", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, b]], cell=[3.0, 3.0, 3.0], pbc=True)
            for b in bonds]


# --- timing --------------------------------------------------------------------------

def timed(func, repeats=1):
    """Best wall time of ``repeats`` calls of ``func(rep)`` and the result of the last call."""
    best, result = float("inf"), None
    for rep in range(repeats):
        t0 = time.perf_counter()
        result = func(rep)
        best = min(best, time.perf_counter() - t0)
    return best, result


def para(processes, chunk=None):
    info = {"num_python_subprocesses": processes}
    if chunk is not None:
        info["num_inputs_per_python_subprocess"] = chunk
    return info


# --- the benchmarks ------------------------------------------------------------------

def bench_emt(n, processes, repeats):
    cells = rattled_cu_cells(n)
    spec = (EMT, [], {})
    # untimed warm-up in this process (first-call costs); pool workers fork from it
    calculate(cells[:10], OutputSpec(), spec, autopara_info=para(0))

    def run(workers):
        def once(_rep):
            out = calculate(cells, OutputSpec(), spec, autopara_info=para(workers))
            return np.array([at.info["EMT_energy"] for at in out])
        return timed(once, repeats)

    t_serial, e_serial = run(0)
    t_pool, e_pool = run(processes)
    identical = len(e_serial) == len(e_pool) == n and np.array_equal(e_serial, e_pool)
    max_diff = float(np.max(np.abs(e_serial - e_pool))) if len(e_serial) == len(e_pool) else float("nan")
    return {"n": n, "serial": t_serial, "pool": t_pool, "identical": identical, "max_diff": max_diff,
            "repeats": repeats}


def bench_noop(n, processes, big_chunk, repeats, tmpdir):
    structures = small_structures(n)
    in_file = tmpdir / "noop_in.xyz"
    ase.io.write(in_file, structures, format="extxyz")        # set-up, not timed
    counter = iter(range(10**6))

    def in_memory(workers, chunk):
        def once(_rep):
            out = autoparallelize(noop, structures, OutputSpec(), autopara_info=para(workers, chunk))
            return sum(1 for _ in out)
        return timed(once, repeats)

    def file_to_file(workers, chunk):
        def once(_rep):
            out_file = tmpdir / f"noop_out_{next(counter)}.xyz"
            autoparallelize(noop, ConfigSet(in_file), OutputSpec(out_file), autopara_info=para(workers, chunk))
            return out_file
        return timed(once, 1)       # the long runs: once

    def ase_floor():
        def once(_rep):
            out_file = tmpdir / f"ase_out_{next(counter)}.xyz"
            frames = ase.io.read(in_file, ":")
            ase.io.write(out_file, frames, format="extxyz")
            return out_file
        return timed(once, repeats)

    rows = []
    for label, workers, chunk in [("serial", 0, big_chunk),
                                  ("serial", 0, 1),
                                  (f"{processes} processes", processes, big_chunk),
                                  (f"{processes} processes", processes, 1)]:
        t_mem, count = in_memory(workers, chunk)
        t_file, out_file = file_to_file(workers, chunk)
        n_out = sum(1 for _ in ase.io.iread(out_file, ":"))     # check, not timed
        rows.append({"label": label, "chunk": chunk, "mem": t_mem, "file": t_file,
                     "mem_ok": count == n, "file_ok": n_out == n})
    t_floor, _ = ase_floor()
    return {"n": n, "rows": rows, "floor": t_floor, "file_mb": in_file.stat().st_size / 1e6}


# --- report --------------------------------------------------------------------------

def header(args):
    import wfl_like
    return (f"wfl_like {wfl_like.__version__} foundation benchmark -- {platform.node()} "
            f"({platform.system()} {platform.machine()}), os.cpu_count()={os.cpu_count()}, "
            f"python {platform.python_version()}, ase {ase.__version__}, numpy {np.__version__}; "
            f"--processes {args.processes}{' --quick' if args.quick else ''}")


def report_emt(r, processes):
    best = f"best of {r['repeats']}" if r["repeats"] > 1 else "single run"
    print(f"\n[1] EMT, {r['n']} rattled 108-atom Cu cells, calculate(..., (EMT, [], {{}})), "
          f"OutputSpec() in memory, default chunk (10); {best}")
    print(f"    {'run':<16}{'time (s)':>10}{'structs/s':>12}")
    print(f"    {'serial':<16}{r['serial']:>10.2f}{r['n'] / r['serial']:>12.1f}")
    print(f"    {f'{processes} processes':<16}{r['pool']:>10.2f}{r['n'] / r['pool']:>12.1f}")
    print(f"    speed-up {processes} processes / serial: {r['serial'] / r['pool']:.2f}x")
    print(f"    identical energies (bitwise): {'yes' if r['identical'] else 'no'} "
          f"(max |dE| serial vs {processes} processes = {r['max_diff']:.3g} eV)")


def report_noop(r, repeats):
    best = f"memory and floor best of {repeats}" if repeats > 1 else "single runs"
    print(f"\n[2] no-op, {r['n']} 2-atom structures ({best}, file runs once; "
          f"input extxyz {r['file_mb']:.1f} MB)")
    print(f"    {'run':<14}{'chunk':>6}{'memory s':>10}{'items/s':>10}"
          f"{'file s':>9}{'items/s':>10}{'file/floor':>11}")
    for row in r["rows"]:
        flag = "" if row["mem_ok"] and row["file_ok"] else "  (output count WRONG)"
        print(f"    {row['label']:<14}{row['chunk']:>6}{row['mem']:>10.3f}{r['n'] / row['mem']:>10.0f}"
              f"{row['file']:>9.2f}{r['n'] / row['file']:>10.0f}{row['file'] / r['floor']:>10.2f}x{flag}")
    print(f"    {'ase.io floor':<14}{'':>6}{'':>10}{'':>10}"
          f"{r['floor']:>9.2f}{r['n'] / r['floor']:>10.0f}{1.0:>10.2f}x")
    print("    (floor: ase.io.read(file, ':') + ase.io.write(out, list) of the same file)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="scaled-down sizes (24 EMT cells, 2,000 no-op structures)")
    parser.add_argument("--processes", type=int, default=2, help="worker processes for the parallel runs (default 2)")
    parser.add_argument("--n-emt", type=int, default=None, help="EMT structures (default 120, --quick 24)")
    parser.add_argument("--n-noop", type=int, default=None, help="no-op structures (default 20000, --quick 2000)")
    parser.add_argument("--chunk", type=int, default=100,
                        help="the larger num_inputs_per_python_subprocess of the no-op runs (default 100)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="best of this many runs for the EMT rows, the in-memory no-op rows and the ASE "
                             "floor (default 2)")
    parser.add_argument("--skip-emt", action="store_true", help="only the no-op part")
    parser.add_argument("--skip-noop", action="store_true", help="only the EMT part")
    args = parser.parse_args(argv)
    n_emt = args.n_emt or (24 if args.quick else 120)
    n_noop = args.n_noop or (2000 if args.quick else 20000)

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("wfl_like").setLevel(logging.WARNING)

    print(header(args))
    t_start = time.perf_counter()
    if not args.skip_emt:
        report_emt(bench_emt(n_emt, args.processes, args.repeats), args.processes)
        sys.stdout.flush()
    if not args.skip_noop:
        with tempfile.TemporaryDirectory(prefix="wfl_like_bench_") as tmp:
            report_noop(bench_noop(n_noop, args.processes, args.chunk, args.repeats, Path(tmp)), args.repeats)
    print(f"\ntotal wall time {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
