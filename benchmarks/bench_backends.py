"""The same EMT workload on every backend, timed side by side in one run.

Serial, wfl_like's local pool, MPI (mpipool under mpiexec, rank 0 driving) and a Dask
LocalCluster, each with the same number of workers; the time of the call itself (not of
starting Python or the cluster), the speed-up over serial, and whether every backend wrote
the serial output byte for byte.

First, the MPI floor: under ``mpiexec -n 2`` (one worker rank), EMT over 200 rattled cells
in chunks of 10, outputs in memory, in interleaved pairs on the same ranks: a bare
``mpipool.MPIExecutor.map`` over the chunks against wfl_like through ``WFL_MPIPOOL``; it
prints each pair and the median of the ratios wfl_like / bare.

Run from the repository root, with the test (or mpi) extra installed:
    python benchmarks/bench_backends.py [--workers 2] [--n 120] [--mpi-pairs 3] [--mpi-n 200] [--skip-backends]
"""

import argparse
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import ase
import numpy as np

RUN = textwrap.dedent("""
    import sys, time
    from wfl_like.autoparallelize import mpipool_support
    mpipool_support.init()
    from ase.calculators.emt import EMT
    from wfl_like import ConfigSet, OutputSpec
    from wfl_like.calculators.generic import calculate

    start = time.perf_counter()
    calculate(ConfigSet(sys.argv[1]), OutputSpec(sys.argv[2]), (EMT, [], {}),
              autopara_info={"num_inputs_per_python_subprocess": int(sys.argv[3]), "cache": False})
    print(f"elapsed {time.perf_counter() - start}")
""")


# Run under mpiexec with WFL_MPIPOOL=1: the same chunks through a bare mpipool map and
# through wfl_like on the same ranks, in interleaved pairs (the order alternates).
MPI_PAIRS = textwrap.dedent("""
    import statistics, sys, time
    import mpi4py
    # mpipool receives each result into a buffer of irecv_bufsz bytes (32 KiB by default): a
    # bare map over chunks of 10 such cells fails with "Message truncated" without a larger one
    mpi4py.rc.irecv_bufsz = 1 << 22
    from wfl_like.autoparallelize import mpipool_support
    mpipool_support.init()
    import numpy as np
    from ase.build import bulk
    from wfl_like import OutputSpec
    from wfl_like.autoparallelize import autoparallelize
    from emt_op import emt

    n, chunk, pairs = (int(a) for a in sys.argv[1:4])
    rng = np.random.default_rng(1)
    cells = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (3, 3, 3)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        cells.append(atoms)
    executor = mpipool_support.active_executor()

    def bare():
        parts = [[atoms.copy() for atoms in cells[i:i + chunk]] for i in range(0, n, chunk)]
        return [atoms for part in executor.map(emt, parts) for atoms in part]

    def engine():
        return list(autoparallelize(emt, cells, OutputSpec(), autopara_info={
            "num_inputs_per_python_subprocess": chunk, "cache": False}))

    ratios = []
    for k in range(pairs):
        times = {}
        for name, run in ((("bare", bare), ("wfl_like", engine)) if k % 2 == 0 else
                          (("wfl_like", engine), ("bare", bare))):
            start = time.perf_counter()
            outputs = run()
            times[name] = time.perf_counter() - start
            energies = [atoms.info["emt_energy"] for atoms in outputs]
            times[name + " energies"] = energies
        assert times["bare energies"] == times["wfl_like energies"], "the two runs disagree"
        ratios.append(times["wfl_like"] / times["bare"])
        print(f"pair {k + 1}: bare {times['bare']:.2f} s, wfl_like {times['wfl_like']:.2f} s, "
              f"ratio {ratios[-1]:.3f}", flush=True)
    print(f"median {statistics.median(ratios):.3f}")
""")

EMT_OP = textwrap.dedent("""
    from ase.calculators.emt import EMT


    def emt(items):
        for atoms in items:
            atoms.calc = EMT()
            atoms.info["emt_energy"] = atoms.get_potential_energy()
            atoms.calc = None
        return items
""")


def write_cells(path, n):
    import ase.io
    from ase.build import bulk

    rng = np.random.default_rng(1)
    cells = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (3, 3, 3)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        cells.append(atoms)
    ase.io.write(path, cells, format="extxyz")


def in_process(source, target, chunk, **autopara):
    from ase.calculators.emt import EMT

    from wfl_like import ConfigSet, OutputSpec
    from wfl_like.calculators.generic import calculate

    start = time.perf_counter()
    calculate(ConfigSet(source), OutputSpec(target), (EMT, [], {}),
              autopara_info={"num_inputs_per_python_subprocess": chunk, "cache": False, **autopara})
    return time.perf_counter() - start


def over_mpi(workdir, source, target, chunk, workers):
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    if mpiexec is None:
        return None, "no mpiexec (install the mpi extra)"
    script = workdir / "run_mpi.py"
    script.write_text(RUN)
    env = {**os.environ, "WFL_MPIPOOL": "1"}
    proc = subprocess.run([mpiexec, "-n", str(workers + 1), sys.executable, str(script), str(source), str(target),
                           str(chunk)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return None, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
    return float(proc.stdout.split("elapsed")[-1]), ""


def mpi_pairs(workdir, n, chunk, pairs):
    """Print interleaved pairs of a bare mpipool map and wfl_like over the same chunks (1 worker rank)."""
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    if mpiexec is None:
        print("    (no mpiexec: install the mpi extra)")
        return
    (workdir / "pairs.py").write_text(MPI_PAIRS)
    (workdir / "emt_op.py").write_text(EMT_OP)
    env = {**os.environ, "WFL_MPIPOOL": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(workdir), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([mpiexec, "-n", "2", sys.executable, str(workdir / "pairs.py"), str(n), str(chunk),
                           str(pairs)], env=env, capture_output=True, text=True, cwd=workdir)
    for line in proc.stdout.splitlines():
        print("    " + line)
    if proc.returncode != 0:
        print("    failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1])


def on_dask(source, target, chunk, workers):
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        return None, "distributed is not installed"
    logging.getLogger("distributed").setLevel(logging.WARNING)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        return in_process(source, target, chunk, executor=client.get_executor()), ""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="workers of every backend (default 2)")
    parser.add_argument("--n", type=int, default=120, help="rattled 108-atom Cu cells (default 120)")
    parser.add_argument("--chunk", type=int, default=5, help="cells per chunk (default 5)")
    parser.add_argument("--mpi-pairs", type=int, default=3,
                        help="interleaved pairs of bare mpipool vs wfl_like (default 3; 0 skips them)")
    parser.add_argument("--mpi-n", type=int, default=200, help="cells of each MPI pair (default 200, chunks of 10)")
    parser.add_argument("--skip-backends", action="store_true", help="only the MPI pairs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    print(f"wfl_like backends benchmark -- {platform.node()} ({platform.system()} {platform.machine()}), "
          f"os.cpu_count()={os.cpu_count()}, python {platform.python_version()}, ase {ase.__version__}, "
          f"numpy {np.__version__}")
    if args.mpi_pairs:
        print(f"MPI floor: EMT over {args.mpi_n} cells in chunks of 10 on 1 worker rank (mpiexec -n 2), outputs in "
              f"memory: a bare mpipool MPIExecutor.map against wfl_like through WFL_MPIPOOL, same ranks, "
              f"time of wfl_like / time of bare (goal <= 1.05)")
        with tempfile.TemporaryDirectory() as tmp:
            mpi_pairs(Path(tmp), args.mpi_n, 10, args.mpi_pairs)
    if args.skip_backends:
        return
    print(f"EMT over {args.n} rattled 108-atom Cu cells, chunk {args.chunk}, {args.workers} workers per backend, "
          f"no journal; time of the call only")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = tmp / "cells.xyz"
        write_cells(source, args.n)
        rows = [("serial", in_process(source, tmp / "serial.xyz", args.chunk, num_python_subprocesses=0), "")]
        rows.append(("local pool", in_process(source, tmp / "pool.xyz", args.chunk,
                                              num_python_subprocesses=args.workers), ""))
        rows.append(("MPI (mpipool)", *over_mpi(tmp, source, tmp / "mpi.xyz", args.chunk, args.workers)))
        rows.append(("Dask LocalCluster", *on_dask(source, tmp / "dask.xyz", args.chunk, args.workers)))
        reference = (tmp / "serial.xyz").read_bytes()
        serial_time = rows[0][1]
        print(f"    {'backend':20s} {'time s':>8s} {'vs serial':>10s}  identical output")
        for (name, seconds, problem), path in zip(rows, ["serial", "pool", "mpi", "dask"]):
            if seconds is None:
                print(f"    {name:20s} {'-':>8s} {'-':>10s}  ({problem})")
                continue
            same = (tmp / f"{path}.xyz").read_bytes() == reference
            print(f"    {name:20s} {seconds:8.2f} {serial_time / seconds:9.2f}x  {'yes' if same else 'NO'}")
    print("    (MPI runs workers + 1 ranks: rank 0 drives and waits; on a machine with as many cores as workers,\n"
          "     it competes with them for the CPU)")


if __name__ == "__main__":
    main()
