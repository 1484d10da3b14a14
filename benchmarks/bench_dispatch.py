"""Dispatch efficiency of the local pool with many workers, and the driver's CPU per item.

Tasks that sleep (no CPU) measure what the driver costs: with ``--workers`` worker
processes each sleeping ``--sleep`` s per item over ``--n`` items, the ideal time is
``n * sleep / workers``; efficiency = ideal / measured.  Measured over the whole call
(pool start-up inside) and from the moment the last worker began its first item
(start-up outside: the rate one driver sustains).  The driver's own CPU time per item
(``time.process_time`` of the driver process, all its threads) says how many workers one
driver can feed at a given op cost; it is given net of start-up too (less the CPU of a
call of one item per worker: forking 64 workers costs the driver CPU of its own).

    python benchmarks/bench_dispatch.py              # 64 workers, 20 ms, 20,000 items, chunks of 1 and "auto"
    python benchmarks/bench_dispatch.py --quick      # 16 workers, 2,000 items
"""

import argparse
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

from wfl_like.autoparallelize import autoparallelize


def sleepy(items, marks, seconds):
    """Sleep ``seconds`` per item; a worker notes when it began its first item."""
    mark = Path(marks) / str(os.getpid())
    if not mark.exists():
        mark.write_text(repr(time.monotonic()))
    for _ in items:
        time.sleep(seconds)
    return [None] * len(items)


def run(n, workers, sleep, chunk):
    """``(wall, wall after start-up, driver CPU)`` of one call."""
    with tempfile.TemporaryDirectory() as marks:
        wall0, cpu0 = time.monotonic(), time.process_time()
        autoparallelize(sleepy, range(n), None, marks, sleep,
                        autopara_info={"num_python_subprocesses": workers, "skip_failed": True,
                                       "num_inputs_per_python_subprocess": chunk, "cache": False})
        end, cpu = time.monotonic(), time.process_time() - cpu0
        all_started = max(float(p.read_text()) for p in Path(marks).iterdir())
    return end - wall0, end - all_started, cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--sleep", type=float, default=0.02, help="seconds per item (default 0.02)")
    parser.add_argument("--chunks", default="1,auto", help="chunk sizes to run, comma-separated (default 1,auto)")
    parser.add_argument("--quick", action="store_true", help="16 workers, 2,000 items")
    args = parser.parse_args()
    if args.quick:
        args.workers, args.n = 16, 2_000
    logging.basicConfig(level=logging.WARNING)
    ideal = args.n * args.sleep / args.workers
    print(f"wfl_like dispatch benchmark -- {platform.node()}, os.cpu_count()={os.cpu_count()}, "
          f"python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}")
    print(f"{args.n} items sleeping {args.sleep * 1000:g} ms each on {args.workers} worker processes; "
          f"ideal {ideal:.2f} s")
    start_wall, _, start_cpu = run(args.workers, args.workers, args.sleep, 1)
    print(f"  start-up: a call of one item per worker takes {start_wall:.2f} s and {start_cpu:.2f} s of driver CPU")
    for chunk in args.chunks.split(","):
        chunk = chunk if chunk == "auto" else int(chunk)
        wall, steady, cpu = run(args.n, args.workers, args.sleep, chunk)
        net_cpu = (cpu - start_cpu) / (args.n - args.workers)
        print(f"  chunk {chunk!s:>5}: {wall:6.2f} s, efficiency {ideal / wall:6.1%} with pool start-up, "
              f"{ideal / steady:6.1%} without ({steady:.2f} s after the last worker began); "
              f"driver CPU {cpu / args.n * 1e6:5.0f} us/item, {net_cpu * 1e6:5.0f} us/item net of start-up")


if __name__ == "__main__":
    main()
