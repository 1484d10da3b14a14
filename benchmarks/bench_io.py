"""Reading extended XYZ: the frame index and the byte-range reader against ase.io.read.

Measured side by side in one run (no assertions, nothing passes or fails), on 10,000
32-atom Cu cells with stored energy, forces and stress (written once, untimed):

1. Indexing: ``index_frames`` scanning the file (no cache), ``index_frames`` with the
   index kept from the previous run (cache hit), and ASE's own frame scan
   (``ase.io.read(path, index=-1)`` finds every frame to give the last one).
2. Reading all frames: ``read_frames`` over the whole file with libextxyz's C parser
   (``WFL_LIKE_EXTXYZ_READER=c``), the same with ASE's parser forced (``=ase``), and
   ``ase.io.read(path, ":")``; the ratios to ``ase.io.read``, and whether every
   structure equals ASE's (numbers, positions, cell, pbc, info, energy, forces, stress).

Interleaved repeats, median of each.  Run from the repository root::

    python benchmarks/bench_io.py             # 10,000 frames, about a minute on 2 cores
    python benchmarks/bench_io.py --quick     # 1,000 frames
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import ase
import ase.io
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from wfl_like.io import fastread
from wfl_like.io.fastread import READER_ENV, read_frames
from wfl_like.io.frames import index_frames

SEED = 20240501


def cu_frames(n):
    """``n`` rattled 32-atom Cu cells carrying a stored energy, forces and stress."""
    base = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    rng = np.random.default_rng(SEED)
    frames = []
    for _ in range(n):
        atoms = base.copy()
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal()), forces=rng.normal(size=(32, 3)),
                                           stress=rng.normal(size=6))
        frames.append(atoms)
    return frames


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def read_with(mode, path, size):
    os.environ[READER_ENV] = mode
    try:
        return read_frames(path, 0, size)
    finally:
        del os.environ[READER_ENV]


def same(got, want):
    """Whether two lists of structures agree in what this benchmark's file holds."""
    if len(got) != len(want):
        return False
    for g, w in zip(got, want):
        if not (np.array_equal(g.numbers, w.numbers) and np.array_equal(g.positions, w.positions)
                and np.array_equal(g.cell.array, w.cell.array) and np.array_equal(g.pbc, w.pbc)
                and g.info.keys() == w.info.keys()):
            return False
        for key in ("energy", "forces", "stress"):
            a, b = g.calc.results[key], w.calc.results[key]
            if type(a) is not type(b) or not np.array_equal(a, b):
                return False
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=10_000, help="number of 32-atom frames (default 10,000)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats, median taken (default 3)")
    parser.add_argument("--quick", action="store_true", help="1,000 frames, 2 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.repeats = 1_000, 2

    print(f"# bench_io: {args.frames} Cu32 frames, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"ASE {ase.__version__}, numpy {np.__version__}, C parser {'yes' if fastread._c_parser() else 'no'}")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["WFL_LIKE_CACHE_DIR"] = str(Path(tmp) / "cache")
        path = Path(tmp) / "cu32.xyz"
        ase.io.write(path, cu_frames(args.frames), format="extxyz")
        size = path.stat().st_size
        print(f"# file: {size / 2**20:.1f} MiB")

        index_times = {"index_frames (scan)": [], "index_frames (cached)": [], "ASE frame scan": []}
        read_times = {"read_frames, C parser": [], "read_frames, ASE parser": [], "ase.io.read": []}
        identical = {}
        have_c = fastread._c_parser() is not None
        for _ in range(args.repeats):
            index_times["index_frames (scan)"].append(timed(lambda: index_frames(path, use_cache=False))[0])
            index_frames(path)
            index_times["index_frames (cached)"].append(timed(lambda: index_frames(path))[0])
            index_times["ASE frame scan"].append(
                timed(lambda: ase.io.read(path, index=-1, format="extxyz", parallel=False))[0])
            seconds, want = timed(lambda: ase.io.read(path, index=":", format="extxyz", parallel=False))
            read_times["ase.io.read"].append(seconds)
            for label, mode in (("read_frames, C parser", "c"), ("read_frames, ASE parser", "ase")):
                if mode == "c" and not have_c:
                    continue
                seconds, got = timed(lambda mode=mode: read_with(mode, path, size))
                read_times[label].append(seconds)
                identical[label] = identical.get(label, True) and same(got, want)
            del want

        _table("indexing", index_times, "ASE frame scan", args.frames)
        _table("reading all frames", read_times, "ase.io.read", args.frames, identical)
    return 0


def _table(title, times, reference, n_frames, identical=None):
    print(f"\n## {title} (median of {len(times[reference])})")
    print(f"{'':28s} {'seconds':>9s} {'us/frame':>9s} {'x ' + reference:>20s}  identical")
    ref = statistics.median(times[reference])
    for label, values in times.items():
        if not values:
            print(f"{label:28s} {'(skipped: extxyz not installed)':>40s}")
            continue
        median = statistics.median(values)
        same_text = "" if identical is None or label not in identical else ("yes" if identical[label] else "NO")
        print(f"{label:28s} {median:9.3f} {median / n_frames * 1e6:9.1f} {median / ref:20.3f}  {same_text}")


if __name__ == "__main__":
    sys.exit(main())
