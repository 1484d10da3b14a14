"""Items per second against the number of workers and the chunk size, for a cheap and a costly op.

The two settings a user tunes, ``num_python_subprocesses`` (0 = serial, 1, 2, 4 workers) and
``num_inputs_per_python_subprocess`` (chunks of 1, 5, 20, 100 and ``"auto"``), over two
operations, each file to file (``ConfigSet(in.xyz)`` -> ``OutputSpec(out.xyz)``, a fresh
output and journal every run, as a first run is):

1. **cheap**: an identity op (``def identity(items): return items``) over small 4-atom Cu
   cells: nothing but the machinery (reading, chunking, moving, writing);
2. **costly**: ``calculate`` with EMT over rattled Cu cells of 32 and 108 atoms (a few
   milliseconds each), the shape of a cheap ML potential's single points.

Every setting runs once per round, in an order that rotates from round to round, and the
median of the rounds is printed, so a machine whose load drifts favours no setting.  Each call
is timed in this process from start to return (the pool's start-up included, as a user's call
pays it).  With ``--plot PATH`` it also draws items/s against the chunk size, one line per
worker count, one panel per op (needs matplotlib).  Nothing passes or fails.

Run from the repository root::

    python benchmarks/bench_tuning.py --plot docs/images/tuning.png   # about 5 min on 2 cores
    python benchmarks/bench_tuning.py --quick --plot tuning.png       # tiny data, a few seconds
"""

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import ase
import ase.io
import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT

from wfl_like import ConfigSet, OutputSpec
from wfl_like.autoparallelize import autoparallelize
from wfl_like.calculators.generic import calculate

WORKERS = "0,1,2,4"
CHUNKS = "1,5,20,100,auto"
# --quick: fewer settings as well as tiny data, so that it takes seconds, not minutes
QUICK_WORKERS = "0,2"
QUICK_CHUNKS = "1,20,auto"


def identity(items):
    """The items as they are: what the machinery alone costs per item."""
    return items


def write_small_cells(path, n, seed=0):
    """``n`` rattled 4-atom fcc Cu cells, written as extended XYZ to ``path``."""
    rng = np.random.default_rng(seed)
    base = bulk("Cu", "fcc", a=3.61, cubic=True)
    cells = []
    for _ in range(n):
        atoms = base.copy()
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        cells.append(atoms)
    ase.io.write(path, cells, format="extxyz", parallel=False)


def write_emt_cells(path, n, seed=1):
    """``n`` rattled Cu cells, alternately 32 and 108 atoms, written as extended XYZ to ``path``."""
    rng = np.random.default_rng(seed)
    unit = bulk("Cu", "fcc", a=3.61, cubic=True)
    bases = (unit * (2, 2, 2), unit * (3, 3, 3))
    cells = []
    for i in range(n):
        atoms = bases[i % 2].copy()
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        cells.append(atoms)
    ase.io.write(path, cells, format="extxyz", parallel=False)


def run_identity(source, target, workers, chunk):
    """The identity op from ``source`` to ``target`` with ``workers`` workers and chunks of ``chunk``."""
    autoparallelize(identity, ConfigSet(source), OutputSpec(target), autopara_info={
        "num_python_subprocesses": workers, "num_inputs_per_python_subprocess": chunk, "progress": False})


def run_emt(source, target, workers, chunk):
    """EMT energies and forces from ``source`` to ``target`` with ``workers`` workers and chunks of ``chunk``."""
    calculate(ConfigSet(source), OutputSpec(target), (EMT, [], {}), properties=["energy", "forces"],
              autopara_info={"num_python_subprocesses": workers, "num_inputs_per_python_subprocess": chunk,
                             "progress": False})


def measure(run, source, workdir, settings, rounds):
    """Median seconds of each setting over interleaved rounds.

    Parameters
    ----------
    run : callable
        ``run(source, target, workers, chunk)``, one call of the op, file to file
    source : Path
        the input file
    workdir : Path
        where each run gets a directory of its own (a first run: no journal to reuse)
    settings : list(tuple(int, int or str))
        the ``(workers, chunk)`` pairs, in the order of the first round
    rounds : int
        how many times each setting runs

    Returns
    -------
    dict
        ``(workers, chunk)`` -> median wall time of the call, in seconds
    """
    times = {setting: [] for setting in settings}
    for round_i in range(rounds):
        # rotating the order: the setting run first in a round (or after a slow one) changes
        shift = round_i * len(settings) // max(rounds, 1)
        for workers, chunk in settings[shift:] + settings[:shift]:
            target = workdir / f"r{round_i}_w{workers}_c{chunk}" / "out.xyz"
            target.parent.mkdir(parents=True)
            start = time.perf_counter()
            run(source, target, workers, chunk)
            times[(workers, chunk)].append(time.perf_counter() - start)
    return {setting: statistics.median(values) for setting, values in times.items()}


def print_table(title, n, medians, workers_list, chunks):
    """Items/s, one row per worker count, one column per chunk size, as a Markdown table."""
    print(f"\n{title}: items/s (median of the rounds)")
    print(f"| workers | {' | '.join(f'chunk {c}' for c in chunks)} |")
    print(f"| --- |{' --- |' * len(chunks)}")
    for workers in workers_list:
        label = "0 (serial)" if workers == 0 else str(workers)
        cells = [f"{n / medians[(workers, chunk)]:,.0f}" for chunk in chunks]
        print(f"| {label} | {' | '.join(cells)} |")


def plot(path, panels, header, workers_list, chunks):
    """Items/s against the chunk size, one line per worker count, one panel per op.

    Parameters
    ----------
    path : str or Path
        the image to write (its format from the suffix, as matplotlib's ``savefig`` takes it)
    panels : list(tuple(str, int, dict))
        ``(title, number of structures, medians)`` per op, medians as :func:`measure` returns them
    header : str
        the figure's title: the machine and its load
    workers_list, chunks : list
        the worker counts (one line each) and chunk sizes (the x axis) measured
    """
    import matplotlib

    # no display is needed, nor wanted, on a cluster node or in CI
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(9, 3.6), constrained_layout=True)
    positions = range(len(chunks))
    for ax, (title, n, medians) in zip(np.atleast_1d(axes), panels):
        for workers in workers_list:
            rates = [n / medians[(workers, chunk)] for chunk in chunks]
            label = "serial (0)" if workers == 0 else f"{workers} worker{'s' if workers > 1 else ''}"
            ax.plot(positions, rates, marker="o", label=label)
        ax.set_xticks(list(positions), [str(c) for c in chunks])
        ax.set_xlabel("num_inputs_per_python_subprocess")
        ax.set_ylabel("items/s")
        # from zero: the gaps between lines read as the ratios they are
        ax.set_ylim(bottom=0)
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle(header, fontsize=8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def parse_list(text, name, allow_auto=False):
    """``"0,1,2"`` as ``[0, 1, 2]`` (``"auto"`` kept as it is where allowed)."""
    values = []
    for part in text.split(","):
        part = part.strip()
        if allow_auto and part == "auto":
            values.append(part)
        elif part.isdigit() and (allow_auto is False or int(part) > 0):
            values.append(int(part))
        else:
            raise SystemExit(f"bench_tuning.py: error: {name} takes whole numbers separated by commas"
                             f"{' (and auto)' if allow_auto else ''}, not {text!r}")
    return values


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny data, one round, workers {QUICK_WORKERS}, chunks {QUICK_CHUNKS}: a few seconds")
    parser.add_argument("--workers", help=f"worker counts, 0 for serial (default {WORKERS})")
    parser.add_argument("--chunks", help=f"chunk sizes (default {CHUNKS})")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per setting (default 3; --quick 1)")
    parser.add_argument("--n-cheap", type=int, help="structures for the cheap op (default 2000; --quick 100)")
    parser.add_argument("--n-emt", type=int, help="structures for EMT (default 200; --quick 6)")
    parser.add_argument("--plot", metavar="PATH", help="write the figure there (PNG; needs matplotlib)")
    args = parser.parse_args()
    workers_list = parse_list(args.workers or (QUICK_WORKERS if args.quick else WORKERS), "--workers")
    chunks = parse_list(args.chunks or (QUICK_CHUNKS if args.quick else CHUNKS), "--chunks", allow_auto=True)
    rounds = args.rounds or (1 if args.quick else 3)
    n_cheap = args.n_cheap or (100 if args.quick else 2000)
    n_emt = args.n_emt or (6 if args.quick else 200)

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    header = (f"{os.cpu_count()} CPUs; Python {platform.python_version()}, ASE {ase.__version__}, "
              f"numpy {np.__version__}; median of {rounds} interleaved round(s); load average {load} at the start")
    print(header, flush=True)
    settings = [(workers, chunk) for workers in workers_list for chunk in chunks]
    with tempfile.TemporaryDirectory(prefix="bench_tuning_") as tmp, warnings.catch_warnings():
        # more workers than CPUs warn that they share the CPUs: the point of those rows
        warnings.simplefilter("ignore", UserWarning)
        tmp = Path(tmp)
        write_small_cells(tmp / "small.xyz", n_cheap)
        write_emt_cells(tmp / "emt.xyz", n_emt)
        panels = [
            (f"cheap: identity, {n_cheap} 4-atom cells", n_cheap,
             measure(run_identity, tmp / "small.xyz", tmp / "identity", settings, rounds)),
            (f"costly: EMT, {n_emt} cells of 32 and 108 atoms", n_emt,
             measure(run_emt, tmp / "emt.xyz", tmp / "emt", settings, rounds)),
        ]
    for title, n, medians in panels:
        print_table(title, n, medians, workers_list, chunks)
    load_end = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nload average {load_end} at the end")
    if args.plot:
        # two lines: one does not fit the figure's width
        title = header.replace("; load average", "\nload average") + f", {load_end} at the end"
        plot(args.plot, panels, title, workers_list, chunks)
        print(f"figure written to {args.plot}")


if __name__ == "__main__":
    main()
