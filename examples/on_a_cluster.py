"""Evaluate EMT on a set of structures with the backend of your choice: the same output file from each.

One call, ``calculate(ConfigSet(inputs), OutputSpec(output), (EMT, [], {}), ...)``, run four ways:

- ``--backend pool``: wfl_like's local worker processes (the reference);
- ``--backend mpi``: the ranks of an MPI job (``WFL_MPIPOOL``); rank 0 drives, the others compute::

      mpiexec -n 3 python examples/on_a_cluster.py --backend mpi

- ``--backend dask``: a Dask cluster's workers through ``Client.get_executor()``; here a
  ``distributed.LocalCluster`` (on a cluster, dask-jobqueue's ``SLURMCluster`` instead);
- ``--backend slurm``: queued jobs, one Slurm job array per call (``remote_info``), each job
  evaluating ``--per-job`` structures; the script waits for them and writes the output.

Whatever the backend, the output is byte for byte the one a serial run writes, and a rerun
with the same arguments finds it done and returns at once (the journal beside the output).

Run from the repository root::

    python examples/on_a_cluster.py --backend pool -n 2
    mpiexec -n 3 python examples/on_a_cluster.py --backend mpi
    python examples/on_a_cluster.py --backend dask -n 2
    python examples/on_a_cluster.py --backend slurm --partition debug --per-job 10
"""

import argparse
import os
import sys
import uuid
from pathlib import Path

EXAMPLE_INPUT = Path(__file__).resolve().parent / "data" / "cu_rattled.xyz"
BACKENDS = ("pool", "mpi", "dask", "slurm")


def parse_args(argv=None):
    """The command line: which backend, on what, into which file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=BACKENDS, required=True)
    parser.add_argument("--inputs", type=Path, default=EXAMPLE_INPUT,
                        help="extended-XYZ file of structures (default: the bundled 40 rattled Cu cells)")
    parser.add_argument("--structures", type=int, help="evaluate only the first N structures of the file")
    parser.add_argument("-o", "--output", type=Path,
                        help="output file (default: on_a_cluster_<backend>.xyz in the working directory)")
    parser.add_argument("-n", "--workers", type=int, default=2,
                        help="pool: worker processes (0: serial); dask: LocalCluster workers; slurm: cores of "
                             "each job, which runs as many workers; mpi: ignored, the ranks are the workers "
                             "(default 2)")
    parser.add_argument("--chunk-size", type=int, default=4, help="structures per call of the operation (default 4)")
    parser.add_argument("--per-job", type=int, default=10, help="slurm: structures per queued job (default 10)")
    parser.add_argument("--partition", help="slurm: the partition to queue on (default: the cluster's default)")
    parser.add_argument("--job-name", help="slurm: name of the jobs (default: on_a_cluster_<random>)")
    parser.add_argument("--max-time", default="10m", help="slurm: wall time of each job (default 10m)")
    args = parser.parse_args(argv)
    if args.workers < (1 if args.backend in ("dask", "slurm") else 0):
        parser.error(f"--backend {args.backend} needs --workers of at least 1, not {args.workers}")
    if args.output is None:
        args.output = Path(f"on_a_cluster_{args.backend}.xyz")
    return args


def evaluate(args, autopara_info):
    """EMT energies, forces and stresses of the inputs, written to ``args.output``.

    Parameters
    ----------
    args : argparse.Namespace
        the command line (inputs, structures, output, chunk size)
    autopara_info : dict
        what the backend adds to the call: workers, an executor, a remote_info, or nothing

    Returns
    -------
    ConfigSet
        the evaluated structures, in input order
    """
    from ase.calculators.emt import EMT

    from wfl_like import ConfigSet, OutputSpec
    from wfl_like.calculators.generic import calculate

    read_kwargs = {"index": f":{args.structures}"} if args.structures else None
    # (EMT, [], {}) rather than EMT(): each worker, rank or job builds its own calculator once
    return calculate(ConfigSet(args.inputs, read_kwargs=read_kwargs), OutputSpec(args.output), (EMT, [], {}),
                     autopara_info={"num_inputs_per_python_subprocess": args.chunk_size, **autopara_info})


def run_pool(args):
    """On wfl_like's own worker processes (``-n 0``: in this process)."""
    return evaluate(args, {"num_python_subprocesses": args.workers})


def run_mpi(args):
    """On the worker ranks that ``mpipool_support.init()`` made."""
    # init() has made the ranks 1..N-1 workers, and only rank 0 gets here: every call of this
    # process runs on them, with no option to pass
    return evaluate(args, {})


def run_dask(args):
    """On the workers of a Dask ``LocalCluster`` started for the call."""
    import dask
    from distributed import Client, LocalCluster

    # On a cluster, the same two lines with dask-jobqueue:
    #     cluster = SLURMCluster(cores=32, processes=32, memory="128GB", walltime="2h"); cluster.scale(jobs=4)
    # One thread per worker process: most ASE calculators are not thread safe.  A generous
    # connect timeout: worker processes start slowly on a loaded machine.
    with dask.config.set({"distributed.comm.timeouts.connect": "120s"}), \
            LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                         dashboard_address=None) as cluster, Client(cluster) as client:
        # the executor stays ours: wfl_like does not shut it down, the with-block does
        return evaluate(args, {"executor": client.get_executor()})


def run_slurm(args):
    """As Slurm job arrays of ``--per-job`` structures each, waiting for them."""
    resources = {"max_time": args.max_time, "num_nodes": 1, "num_cores": args.workers}
    if args.partition:
        resources["partitions"] = args.partition
    remote_info = {"sys_name": "slurm", "job_name": args.job_name or f"on_a_cluster_{uuid.uuid4().hex[:8]}",
                   "resources": resources, "num_inputs_per_queued_job": args.per_job,
                   # a small example's jobs take seconds: look at the queue more often than the default 5 s
                   "check_interval": 1}
    return evaluate(args, {"remote_info": remote_info})


def main(argv=None):
    """Run the call on the backend of the command line and print one line about the outputs."""
    args = parse_args(argv)
    if args.backend == "mpi":
        # Set here so that the command line above needs nothing more; in a job script,
        # `export WFL_MPIPOOL=1` does the same.  Ranks 1..N-1 serve rank 0 inside init() and
        # leave the process when it is done: they never run the rest of main().
        os.environ.setdefault("WFL_MPIPOOL", "1")
        try:
            from mpi4py import MPI
        except ImportError:
            sys.exit('on_a_cluster.py: error: --backend mpi needs the mpi extra: pip install "wfl-like[mpi]"')
        if MPI.COMM_WORLD.Get_size() < 2:
            # said here in one line: mpipool's own refusal is a traceback
            sys.exit("on_a_cluster.py: error: --backend mpi needs 2 or more MPI ranks: "
                     "mpiexec -n 3 python examples/on_a_cluster.py --backend mpi")
        from wfl_like.autoparallelize import mpipool_support

        mpipool_support.init()
    run = {"pool": run_pool, "mpi": run_mpi, "dask": run_dask, "slurm": run_slurm}[args.backend]
    evaluated = list(run(args))
    energies = [atoms.info["EMT_energy"] / len(atoms) for atoms in evaluated]
    print(f"{len(evaluated)} structures evaluated on {args.backend} into {args.output}; "
          f"mean EMT energy {sum(energies) / len(energies):.6f} eV/atom")


if __name__ == "__main__":
    main()
