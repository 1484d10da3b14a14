"""Extended XYZ rendering of outputs: ASE's writer against the fast one, side by side.

Renders 10,000 rattled 32-atom Cu cells holding energy, forces and stress (a single-point
calculator, as a calculation leaves them) through ``wfl_like.io.render.render``, once with
``WFL_LIKE_EXTXYZ_WRITER=ase`` and once with the fast writer, in interleaved blocks so that
both see the same machine load.  Prints microseconds per frame (median block) and the
ratio; checks first that both give the same text.

    python benchmarks/bench_io_write.py [--frames 10000] [--blocks 10]
"""

import argparse
import os
import statistics
import time

import numpy as np
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from wfl_like.io.render import WRITER_ENV, render

WRITE_KWARGS = {"format": "extxyz"}


def frames(count, seed=0):
    rng = np.random.default_rng(seed)
    base = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    made = []
    for index in range(count):
        atoms = base.copy()
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal()), forces=rng.normal(size=(32, 3)),
                                           stress=rng.normal(size=6))
        atoms.info["_ConfigSet_loc"] = f" / {index}"
        made.append(atoms)
    return made


def render_all(structures, writer):
    os.environ[WRITER_ENV] = writer
    start = time.perf_counter()
    for atoms in structures:
        render(atoms, WRITE_KWARGS)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--blocks", type=int, default=10)
    args = parser.parse_args()
    structures = frames(args.frames)
    os.environ[WRITER_ENV] = "ase"
    expected = [render(atoms, WRITE_KWARGS) for atoms in structures[:200]]
    os.environ[WRITER_ENV] = "fast"
    if [render(atoms, WRITE_KWARGS) for atoms in structures[:200]] != expected:
        raise SystemExit("the fast writer's text differs from ASE's")
    block = max(1, len(structures) // args.blocks)
    per_frame = {"ase": [], "fast": []}
    for start in range(0, len(structures), block):
        chunk = structures[start:start + block]
        for writer in ("ase", "fast") if start // block % 2 == 0 else ("fast", "ase"):
            per_frame[writer].append(render_all(chunk, writer) / len(chunk) * 1e6)
    os.environ.pop(WRITER_ENV, None)
    ase_us, fast_us = (statistics.median(per_frame[writer]) for writer in ("ase", "fast"))
    print(f"render of {len(structures)} 32-atom Cu frames with energy, forces, stress "
          f"(median of {len(per_frame['ase'])} interleaved blocks)")
    print(f"  ASE writer : {ase_us:8.1f} us/frame")
    print(f"  fast writer: {fast_us:8.1f} us/frame")
    print(f"  ratio ASE/fast: {ase_us / fast_us:.2f}x")


if __name__ == "__main__":
    main()
