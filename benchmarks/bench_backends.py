"""The same EMT workload on every backend, timed side by side in one run.

Serial, wfl_like's local pool, MPI (mpipool under mpiexec, rank 0 driving) and a Dask
LocalCluster, each with the same number of workers; the time of the call itself (not of
starting Python or the cluster), the speed-up over serial, and whether every backend wrote
the serial output byte for byte.

Run from the repository root, with the test (or mpi) extra installed:
    python benchmarks/bench_backends.py [--workers 2] [--n 120]
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
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    print(f"wfl_like backends benchmark -- {platform.node()} ({platform.system()} {platform.machine()}), "
          f"os.cpu_count()={os.cpu_count()}, python {platform.python_version()}, ase {ase.__version__}, "
          f"numpy {np.__version__}")
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
