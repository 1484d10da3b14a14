"""What the engine adds per item, serial and on the local pool, for in-memory inputs.

A no-op (``def noop(items): return items``) over ``--n`` small ``Atoms`` (2 atoms, a cell,
an info entry), outputs in memory (``OutputSpec()``), ``num_inputs_per_python_subprocess="auto"``.
Measured side by side in interleaved rounds, the median of each printed in us per item:

- ``plain loop``: ``for atoms in inputs: out.extend(noop([atoms]))``, the floor;
- ``loop + copies``: the same on the copies a serial run makes so that the caller's objects
  never change (``workers.isolation.isolated`` of each chunk of 200): what isolation costs;
- ``loop + pickle``: the same on a pickle round trip of each chunk, the way of earlier versions;
- ``serial``: ``autoparallelize`` with ``num_python_subprocesses=0``;
- ``pool``: with ``--workers`` (default 2) worker processes, with the driver's CPU time per
  item (``time.process_time``, all its threads) and the workers' (all of them together, from
  their start to their end: ``RUSAGE_CHILDREN``, which also counts the pool's small guardian
  process) beside it.

Each row's time runs from the call to its return; the outputs are freed after the clock
stops, since when they are dropped is the caller's choice (about 1 us per structure).

The overhead is each row minus the plain loop.  On a machine busy with other work, the
pool's wall time waits for CPUs; its driver CPU per item is the steadier figure.

    python benchmarks/bench_overhead.py             # 20,000 items, 3 rounds
    python benchmarks/bench_overhead.py --quick     # 5,000 items, 2 rounds
"""

import argparse
import logging
import os
import pickle
import platform
import resource
import statistics
import time

from ase import Atoms

from wfl_like import OutputSpec
from wfl_like.autoparallelize import autoparallelize
from wfl_like.autoparallelize.workers.isolation import isolated


def noop(items):
    return items


def small(i):
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [1, 1, 1]], cell=[3, 3, 3], pbc=True)
    atoms.info["label"] = i
    return atoms


def plain_loop(inputs, prepare=None, chunk=200):
    out = []
    for start in range(0, len(inputs), chunk):
        part = inputs[start:start + chunk]
        if prepare is not None:
            part = prepare(part)
        for atoms in part:
            out.extend(noop([atoms]))
    return out


def engine(inputs, workers):
    return autoparallelize(noop, inputs, OutputSpec(), autopara_info={
        "num_python_subprocesses": workers, "num_inputs_per_python_subprocess": "auto", "cache": False})


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="5,000 items, 2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.n, args.rounds = 5_000, 2
    logging.basicConfig(level=logging.WARNING)
    inputs = [small(i) for i in range(args.n)]
    rows = {
        "plain loop": lambda: plain_loop(inputs),
        "loop + copies": lambda: plain_loop(inputs, isolated),
        "loop + pickle": lambda: plain_loop(inputs, lambda part: pickle.loads(pickle.dumps(part, 5))),
        "serial": lambda: engine(inputs, 0),
        "pool": lambda: engine(inputs, args.workers),
    }
    wall = {name: [] for name in rows}
    driver_cpu, workers_cpu = [], []
    for _ in range(args.rounds):
        for name, run in rows.items():
            children0 = _children_cpu()
            cpu0, start = time.process_time(), time.perf_counter()
            result = run()
            wall[name].append((time.perf_counter() - start) / args.n * 1e6)
            if name == "pool":
                driver_cpu.append((time.process_time() - cpu0) / args.n * 1e6)
                # the workers are reaped when the call returns: their whole CPU time is counted
                workers_cpu.append((_children_cpu() - children0) / args.n * 1e6)
            # freed outside the clock: dropping the outputs is the caller's cost, whenever it
            # drops them (the plain loop's outputs are its inputs, and free nothing)
            del result
    print(f"wfl_like per-item overhead -- {platform.node()}, os.cpu_count()={os.cpu_count()}, "
          f"python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}")
    print(f"no-op over {args.n} 2-atom Atoms in memory, chunks \"auto\", medians of {args.rounds} interleaved rounds")
    floor = statistics.median(wall["plain loop"])
    for name, times in wall.items():
        median = statistics.median(times)
        extra = (f"  (driver CPU {statistics.median(driver_cpu):.1f} us/item, {args.workers} workers' CPU "
                 f"{statistics.median(workers_cpu):.1f})") if name == "pool" else ""
        print(f"    {name:14s} {median:7.1f} us/item, overhead {median - floor:7.1f} us/item{extra}")


if __name__ == "__main__":
    main()
