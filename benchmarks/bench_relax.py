"""Relaxations: ``wfl_like.generate.optimize.optimize`` serial against worker processes, side by side.

100 rattled 108-atom fcc Cu cells (3x3x3 cubic, displacements of 0.1 A standard
deviation, fixed seed), ASE's EMT from the spec ``(EMT, [], {})``, fixed cell,
``fmax=0.05``, at most 200 steps, PreconLBFGS with its default preconditioner, outputs
(the whole trajectories) in memory, default chunk size (10).  Each configuration runs
``--repeats`` times in interleaved rounds; the best time is shown, with the speed-up over
serial.  When wfl is importable (wfl 0.3.5 needs ``pip install --no-deps wfl==0.3.5
expyre-wfl docstring_parser pyyaml`` beside wfl_like), its own ``optimize`` runs the same
cells the same ways, alternating with wfl_like's, and the last frames of the two are
compared.  Nothing passes or fails.  Times follow the machine's load (the header gives
it) and the BLAS threads of each process: ``OPENBLAS_NUM_THREADS=1`` keeps 2 workers
from oversubscribing 2 cores.  Run from the repository root::

    python benchmarks/bench_relax.py            # about 2.5 min on a quiet 2-core machine (1.5 without wfl)
    python benchmarks/bench_relax.py --quick    # 20 cells, about 30 s
"""

import argparse
import contextlib
import io
import logging
import os
import platform
import time

import ase
import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT

import wfl_like.configset
from wfl_like.generate.optimize import optimize

RELAX = {"fmax": 0.05, "steps": 200}


def rattled_cu_cells(n, seed=1, stdev=0.1):
    base = bulk("Cu", "fcc", a=3.6, cubic=True) * (3, 3, 3)
    rng = np.random.default_rng(seed)
    cells = []
    for i in range(n):
        atoms = base.copy()
        atoms.positions += rng.normal(scale=stdev, size=atoms.positions.shape)
        atoms.info["cell_i"] = i
        cells.append(atoms)
    return cells


def wfl_like_run(cells, workers):
    result = optimize(wfl_like.configset.ConfigSet([atoms.copy() for atoms in cells]),
                      wfl_like.configset.OutputSpec(), (EMT, [], {}),
                      autopara_info={"num_python_subprocesses": workers}, **RELAX)
    return list(result)


def wfl_run(cells, workers):
    from wfl.configset import ConfigSet, OutputSpec
    from wfl.generate.optimize import optimize as wfl_optimize

    # wfl prints each structure's space group: keep the table readable
    with contextlib.redirect_stdout(io.StringIO()):
        result = wfl_optimize(ConfigSet([atoms.copy() for atoms in cells]), OutputSpec(), (EMT, [], {}),
                              autopara_info={"num_python_subprocesses": workers}, **RELAX)
        return list(result)


def wfl_available():
    try:
        import wfl.generate.optimize  # noqa: F401
    except Exception as exc:      # absent, or broken against today's ASE or numpy
        print(f"wfl not importable ({type(exc).__name__}: {exc}); wfl_like only")
        return False
    import wfl
    print(f"wfl {getattr(wfl, '__version__', '?')} found: its optimize runs too")
    return True


def last_frames(frames):
    """The last frame of each cell's trajectory, by cell."""
    last = {}
    for frame in frames:
        last[frame.info["cell_i"]] = frame
    return [last[i] for i in sorted(last)]


def timed(run, cells, workers):
    start = time.perf_counter()
    frames = run(cells, workers)
    return time.perf_counter() - start, frames


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cells", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="20 cells")
    parser.add_argument("--skip-wfl", action="store_true", help="do not run wfl even if it is importable")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    os.environ.pop("WFL_NUM_PYTHON_SUBPROCESSES", None)
    n = 20 if args.quick else args.cells
    print(f"Python {platform.python_version()}, ASE {ase.__version__}, numpy {np.__version__}, "
          f"{os.cpu_count()} CPUs; {n} rattled 108-atom Cu cells, EMT, fmax {RELAX['fmax']}, "
          f"at most {RELAX['steps']} steps; load average {os.getloadavg()[0]:.1f} at the start; "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    runners = {"wfl_like": wfl_like_run}
    if not args.skip_wfl and wfl_available():
        runners["wfl 0.3.5"] = wfl_run
    cells = rattled_cu_cells(n)
    best, outputs = {}, {}
    for _ in range(args.repeats):
        # the two codes alternate at each worker count: a machine whose load drifts favours neither
        for workers in (0, args.workers):
            for name, run in runners.items():
                seconds, frames = timed(run, cells, workers)
                key = (name, workers)
                best[key] = min(seconds, best.get(key, np.inf))
                outputs[key] = frames
    report(best, outputs, runners, args.workers, n)


def report(best, outputs, runners, workers, n):
    print(f"\n{'code':<10} {'workers':>7} {'time (s)':>9} {'s/cell':>7} {'speed-up':>9} {'frames':>7}")
    for name in runners:
        serial = best[(name, 0)]
        for w in (0, workers):
            seconds = best[(name, w)]
            print(f"{name:<10} {w:>7} {seconds:9.2f} {seconds / n:7.3f} {serial / seconds:8.2f}x "
                  f"{len(outputs[(name, w)]):>7}")
    reference = last_frames(outputs[("wfl_like", 0)])
    steps = [frame.info["optimize_n_steps"] for frame in reference]
    converged = sum(frame.info["optimize_config_type"] == "optimize_last_converged" for frame in reference)
    print(f"\nwfl_like: {converged}/{n} converged, steps per cell {min(steps)}..{max(steps)} "
          f"(mean {np.mean(steps):.1f})")
    for key, frames in outputs.items():
        if key == ("wfl_like", 0):
            continue
        difference = max(np.abs(a.positions - b.positions).max() for a, b in zip(last_frames(frames), reference))
        print(f"{key[0]} with {key[1]} workers: last frames differ from wfl_like serial's by at most "
              f"{difference:.2g} A")
    if "wfl 0.3.5" in runners:
        for w in (0, workers):
            print(f"wfl_like / wfl time with {w} workers: {best[('wfl_like', w)] / best[('wfl 0.3.5', w)]:.2f}")


if __name__ == "__main__":
    main()
