"""Fault-tolerance benchmark: what the supervision costs, and whether the driver's memory stays flat.

Measured side by side in one run (no assertions, nothing passes or fails):

1. Supervision overhead.  A no-op operation over many 2-atom structures, file to file
   (``ConfigSet(file)`` -> ``OutputSpec(other file)``), serial and with a pool, chunks of
   100, in items/s, against a baseline that does the same work in the same run with no
   supervision at all:

   - serial: ``for at in ConfigSet(file): out.store(at, loc)`` (wfl_like's I/O without
     the engine);
   - pool: ``concurrent.futures.ProcessPoolExecutor.map(noop, chunks)``, reading and
     writing the same way.

   The same engine runs again with an operation that raises on 1% of the items and
   ``errors="skip"``, to show the cost of isolating the failures (each failing chunk is
   run again item by item).

2. Peak memory of the driver.  In a fresh subprocess per run (so each has its own peak),
   a generator of N small ``Atoms`` is fed to ``autoparallelize`` (no-op, a pool, chunks
   of 100), outputs to an extended XYZ file or ``outputs=None``, for two sizes N; the
   ``ru_maxrss`` of the driver and the ratio between the sizes.

Run from the repository root::

    python benchmarks/bench_faults.py            # full size, ~5 min on 2 cores
    python benchmarks/bench_faults.py --quick    # scaled down, ~40 s
"""

import argparse
import concurrent.futures
import itertools
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import ase
import ase.io
from ase import Atoms

from wfl_like import ConfigSet, OutputSpec
from wfl_like.autoparallelize import autoparallelize
from wfl_like.autoparallelize.workers.pool import default_context
from wfl_like.locations import LOC_KEY

SEED = 20240501


def noop(items):
    """The operation that does nothing: every input is its own output."""
    return items


def noop_failing(items, bad, _autopara_per_item_info=None):
    """A no-op that raises when its chunk holds an item whose input index is in ``bad``."""
    for info in _autopara_per_item_info:
        if info["item_i"] in bad:
            raise ValueError(f"injected failure on item {info['item_i']}")
    return items


# --- structures ----------------------------------------------------------------------

def h2(bond):
    return Atoms("H2", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, bond]], cell=[3.0, 3.0, 3.0], pbc=True)


def small_structures(n, seed=SEED):
    """``n`` 2-atom H2 molecules in a small periodic box (the structures of bench_foundation.py)."""
    rng = np.random.default_rng(seed)
    return [h2(b) for b in 0.7 + 0.1 * rng.random(n)]


def generated_structures(n):
    """``n`` H2 molecules made one at a time, never all held at once."""
    for i in range(n):
        yield h2(0.7 + 0.1 * ((i * 0.6180339887) % 1.0))


def para(processes, chunk, **extra):
    return {"num_python_subprocesses": processes, "num_inputs_per_python_subprocess": chunk, **extra}


def count_frames(path):
    """Structures in an extended XYZ file (check, not timed)."""
    return sum(1 for _ in ase.io.iread(path, ":", format="extxyz", parallel=False))


# --- part 1: supervision overhead ----------------------------------------------------

def baseline_serial(in_file, out_file):
    """wfl_like's own I/O, no engine: read the ConfigSet, store each structure at its location."""
    out = OutputSpec(out_file)
    for at in ConfigSet(in_file):
        out.store(at, at.info[LOC_KEY])
    out.close()
    return 0


def baseline_pool(in_file, out_file, processes, chunk):
    """The same I/O, with chunks sent through a plain ProcessPoolExecutor (no supervision)."""
    out = OutputSpec(out_file)
    items = iter(ConfigSet(in_file))
    chunks = iter(lambda: list(itertools.islice(items, chunk)), [])
    # the engine's start method (fork on Linux), so both pay the same start-up cost
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=default_context()) as executor:
        for outputs in executor.map(noop, chunks):
            for at in outputs:
                out.store(at, at.info[LOC_KEY])
    out.close()
    return 0


def engine(in_file, out_file, processes, chunk):
    autoparallelize(noop, ConfigSet(in_file), OutputSpec(out_file), autopara_info=para(processes, chunk))
    return 0


def engine_failing(in_file, out_file, processes, chunk, bad):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # the FailedItemsWarning lists every failed item
        result = autoparallelize(noop_failing, ConfigSet(in_file), OutputSpec(out_file), bad=bad,
                                 autopara_info=para(processes, chunk, errors="skip"))
    return len(result.failures)


def bench_overhead(n, processes, chunk, fail_fraction, repeats, tmpdir):
    in_file = tmpdir / "faults_in.xyz"
    ase.io.write(in_file, small_structures(n), format="extxyz")     # set-up, not timed
    n_bad = max(1, round(fail_fraction * n))
    bad = frozenset(int(i) for i in np.random.default_rng(SEED + 1).choice(n, size=n_bad, replace=False))
    bad_chunks = len({i // chunk for i in bad})

    pool = f"{processes} processes"
    runs = [  # (key, group, label, func(out_file))
        ("base_serial", "serial", "baseline: ConfigSet loop + OutputSpec.store",
         lambda out: baseline_serial(in_file, out)),
        ("eng_serial", "serial", "autoparallelize (engine)",
         lambda out: engine(in_file, out, 0, chunk)),
        ("fail_serial", "serial", f"engine, {fail_fraction:.0%} of items raise, errors='skip'",
         lambda out: engine_failing(in_file, out, 0, chunk, bad)),
        ("base_pool", pool, "baseline: ProcessPoolExecutor.map",
         lambda out: baseline_pool(in_file, out, processes, chunk)),
        ("eng_pool", pool, "autoparallelize (engine)",
         lambda out: engine(in_file, out, processes, chunk)),
        ("fail_pool", pool, f"engine, {fail_fraction:.0%} of items raise, errors='skip'",
         lambda out: engine_failing(in_file, out, processes, chunk, bad)),
    ]
    best = {key: float("inf") for key, *_ in runs}
    failures, n_out = {}, {}
    counter = itertools.count()
    # interleaved rounds: a slow spell of the machine hits every variant, not just one
    for _rep in range(repeats):
        for key, _group, _label, func in runs:
            out_file = tmpdir / f"faults_out_{next(counter)}.xyz"
            t0 = time.perf_counter()
            n_failed = func(out_file)
            best[key] = min(best[key], time.perf_counter() - t0)
            failures[key] = n_failed
            n_out[key] = count_frames(out_file)
            out_file.unlink()
    rows = [{"key": key, "group": group, "label": label, "time": best[key], "failures": failures[key],
             "n_out": n_out[key]} for key, group, label, _ in runs]
    return {"n": n, "chunk": chunk, "rows": rows, "n_bad": n_bad, "bad_chunks": bad_chunks,
            "n_chunks": -(-n // chunk), "repeats": repeats, "file_mb": in_file.stat().st_size / 1e6}


# --- part 2: peak memory of the driver ------------------------------------------------

def memory_driver(n, outputs, processes, chunk, tmpdir):
    """Runs in its own process: one autoparallelize over a generator; prints a JSON line."""
    logging.getLogger("wfl_like").setLevel(logging.WARNING)
    consumed = itertools.count()

    def counted(structures):
        for at in structures:
            next(consumed)
            yield at

    out = OutputSpec(Path(tmpdir) / "out.xyz") if outputs == "file" else None
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss     # KiB on Linux
    t0 = time.perf_counter()
    autoparallelize(noop, counted(generated_structures(n)), out, autopara_info=para(processes, chunk))
    elapsed = time.perf_counter() - t0
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"n": n, "outputs": outputs, "elapsed": elapsed, "rss_before_kib": rss_before,
                      "rss_peak_kib": rss_peak, "consumed": next(consumed),
                      "stored": out.n_stored if out is not None else None}))


def run_memory_driver(n, outputs, processes, chunk):
    with tempfile.TemporaryDirectory(prefix="wfl_like_bench_mem_") as tmp:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-driver", str(n), outputs,
               "--processes", str(processes), "--chunk", str(chunk), "--driver-tmpdir", tmp]
        if os.name == "posix":
            # Linux carries the RSS high-water mark of the process that execs into the new
            # program's ru_maxrss: a driver started straight from this (~100 MiB) process
            # would report at least this process's size.  A shell that forks the driver
            # (no exec of its own: "; exit") passes on only its own few MiB.
            cmd = ["/bin/sh", "-c", '"$@"; exit $?', "sh"] + cmd
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"n": n, "outputs": outputs, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_memory(sizes, processes, chunk):
    results = []
    for outputs in ("file", "none"):
        for n in sizes:
            results.append(run_memory_driver(n, outputs, processes, chunk))
            report_memory_row(results[-1])
            sys.stdout.flush()
    return results


# --- report --------------------------------------------------------------------------

def header(args):
    import wfl_like
    return (f"wfl_like {wfl_like.__version__} ({Path(wfl_like.__file__).parent}) fault-tolerance benchmark -- "
            f"{platform.node()} "
            f"({platform.system()} {platform.machine()}), os.cpu_count()={os.cpu_count()}, "
            f"python {platform.python_version()}, ase {ase.__version__}, numpy {np.__version__}; "
            f"--processes {args.processes}{' --quick' if args.quick else ''}")


def report_overhead(r):
    best = f"best of {r['repeats']} interleaved rounds" if r["repeats"] > 1 else "single runs"
    print(f"\n[1] supervision overhead: no-op over {r['n']} 2-atom structures, file to file "
          f"(ConfigSet(extxyz {r['file_mb']:.1f} MB) -> OutputSpec(file)), chunk {r['chunk']}; {best}")
    print(f"    injected failures: {r['n_bad']} items raise, in {r['bad_chunks']} of {r['n_chunks']} chunks "
          f"(each such chunk is re-run item by item)")
    print(f"    {'run':<14}{'variant':<47}{'time s':>8}{'items/s':>9}{'vs base':>9}{'failed':>8}{'written':>9}")
    base = {}
    for row in r["rows"]:
        if row["key"].startswith("base"):
            base[row["group"]] = row["time"]
        ratio = base[row["group"]] / row["time"]
        expected = r["n"] - (r["n_bad"] if row["key"].startswith("fail") else 0)
        flag = "" if row["n_out"] == expected else f"  (expected {expected})"
        failed = row["failures"] if row["key"].startswith("fail") else "-"
        print(f"    {row['group']:<14}{row['label']:<47}{row['time']:>8.2f}{r['n'] / row['time']:>9.0f}"
              f"{ratio:>8.2f}x{failed:>8}{row['n_out']:>9}{flag}")
    print("    vs base: items/s of the run / items/s of the baseline of its group "
          "(1.00x = the supervision costs nothing; 0.87x = 15% slower)")


def report_memory_header(sizes, processes, chunk):
    print(f"\n[2] peak RSS of the driver (ru_maxrss, own subprocess per run): generator of N H2 -> "
          f"autoparallelize(no-op), {processes} processes, chunk {chunk}")
    print(f"    {'outputs':<14}{'N':>9}{'elapsed s':>11}{'items/s':>9}{'RSS before MiB':>16}"
          f"{'peak MiB':>10}{'consumed':>10}{'written':>9}")


def report_memory_row(row):
    label = "extxyz file" if row["outputs"] == "file" else "None"
    if "error" in row:
        print(f"    {label:<14}{row['n']:>9}  FAILED: {row['error']}")
        return
    stored = "-" if row["stored"] is None else row["stored"]
    print(f"    {label:<14}{row['n']:>9}{row['elapsed']:>11.1f}{row['n'] / row['elapsed']:>9.0f}"
          f"{row['rss_before_kib'] / 1024:>16.1f}{row['rss_peak_kib'] / 1024:>10.1f}"
          f"{row['consumed']:>10}{stored:>9}")


def report_memory_ratios(results, sizes):
    small, large = sizes
    for outputs, label in (("file", "extxyz file"), ("none", "None")):
        rows = {row["n"]: row for row in results if row["outputs"] == outputs and "error" not in row}
        if small in rows and large in rows:
            ratio = rows[large]["rss_peak_kib"] / rows[small]["rss_peak_kib"]
            growth = (rows[large]["rss_peak_kib"] - rows[small]["rss_peak_kib"]) / 1024
            print(f"    outputs={label}: peak RSS N={large} / N={small} = {ratio:.3f}x "
                  f"({growth:+.1f} MiB for {large // small}x the items)")
    print("    (RSS before: the driver's high-water mark after imports, before the run)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="scaled-down sizes (2,000 structures for the overhead; 5,000 and 50,000 for memory)")
    parser.add_argument("--processes", type=int, default=2, help="worker processes for the parallel runs (default 2)")
    parser.add_argument("--chunk", type=int, default=100, help="num_inputs_per_python_subprocess (default 100)")
    parser.add_argument("--n-noop", type=int, default=None,
                        help="structures for the overhead part (default 20000, --quick 2000)")
    parser.add_argument("--fail-fraction", type=float, default=0.01,
                        help="fraction of items that raise in the failure runs (default 0.01)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved rounds of the overhead runs; the best of each is shown (default 3)")
    parser.add_argument("--mem-sizes", type=int, nargs=2, metavar=("N1", "N2"), default=None,
                        help="input sizes of the memory runs (default 50000 500000, --quick 5000 50000)")
    parser.add_argument("--skip-overhead", action="store_true", help="only the memory part")
    parser.add_argument("--skip-memory", action="store_true", help="only the overhead part")
    # internal: one memory run, in the subprocess started by the memory part
    parser.add_argument("--memory-driver", nargs=2, metavar=("N", "OUTPUTS"), help=argparse.SUPPRESS)
    parser.add_argument("--driver-tmpdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("wfl_like").setLevel(logging.WARNING)

    if args.memory_driver:
        n, outputs = args.memory_driver
        memory_driver(int(n), outputs, args.processes, args.chunk, args.driver_tmpdir)
        return

    n_noop = args.n_noop or (2000 if args.quick else 20000)
    sizes = args.mem_sizes or ([5000, 50000] if args.quick else [50000, 500000])

    print(header(args))
    sys.stdout.flush()
    t_start = time.perf_counter()
    if not args.skip_overhead:
        with tempfile.TemporaryDirectory(prefix="wfl_like_bench_") as tmp:
            report_overhead(bench_overhead(n_noop, args.processes, args.chunk, args.fail_fraction,
                                           args.repeats, Path(tmp)))
        sys.stdout.flush()
    if not args.skip_memory:
        report_memory_header(sizes, args.processes, args.chunk)
        results = bench_memory(sizes, args.processes, args.chunk)
        report_memory_ratios(results, sizes)
    print(f"\ntotal wall time {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
