"""A three-step pipeline: relax, run MD from the relaxed cells, evaluate every MD frame again.

Relax the bundled rattled Cu cells with EMT (cell too, at zero pressure), run a short 300 K
MD (Berendsen NVT) from each relaxed cell, then evaluate every saved MD frame with a
Lennard-Jones potential and compare the two.  One random generator is shared by the steps, so the whole pipeline is
reproducible: the same outputs for any number of worker processes.  It is also resumable:
kill it at any point and run it again, and it goes on where it stopped, to the same outputs
(each step keeps a journal beside its output file).

Run from the repository root::

    python examples/relax_md_calculate.py -n 2 --workdir pipeline_out
"""

import argparse
from pathlib import Path

import ase.io
import numpy as np
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones

from wfl_like import ConfigSet, OutputSpec
from wfl_like.calculators.generic import calculate
from wfl_like.generate.md import md
from wfl_like.generate.optimize import optimize

EXAMPLE_INPUT = Path(__file__).resolve().parent / "data" / "cu_rattled.xyz"
# Lennard-Jones parameters that roughly fit copper
LJ_CU = {"sigma": 2.33, "epsilon": 0.41, "rc": 6.0}


def run_pipeline(inputs, workdir, num_processes, seed=2024, md_steps=200):
    """Relax, then MD, then evaluate with LJ; the ConfigSet of the evaluated frames.

    ``inputs`` is a file name or a list of structures."""
    rng = np.random.default_rng(seed)
    autopara = {"num_python_subprocesses": num_processes}
    emt = (EMT, [], {})       # a spec: each worker builds its own calculator once
    relaxed = optimize(ConfigSet(inputs), OutputSpec("relaxed.xyz", file_root=workdir), emt,
                       fmax=0.05, steps=300, pressure=0.0, traj_subselect="last_converged",
                       rng=rng, autopara_info=autopara)
    trajectories = md(relaxed, OutputSpec("md.xyz", file_root=workdir), emt, steps=md_steps, dt=2.0,
                      temperature=300.0, temperature_tau=100.0, traj_step_interval=50, rng=rng,
                      autopara_info=autopara)
    return calculate(trajectories, OutputSpec("md_lj.xyz", file_root=workdir), (LennardJones, [], LJ_CU),
                     properties=["energy", "forces"], output_prefix="LJ_", autopara_info=autopara)


def summary(evaluated):
    """One line comparing the EMT energies of the MD frames with the LJ ones."""
    frames = list(evaluated)
    emt = np.array([atoms.info["last_op__md_energy"] / len(atoms) for atoms in frames])
    lj = np.array([atoms.info["LJ_energy"] / len(atoms) for atoms in frames])
    shift = np.mean(lj - emt)
    spread = np.std(lj - emt)
    return (f"{len(frames)} MD frames; LJ - EMT energy per atom: mean {shift:.4f} eV, "
            f"spread {spread:.4f} eV after removing the mean")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default=str(EXAMPLE_INPUT), help="input structures (default: the bundled Cu cells)")
    parser.add_argument("--workdir", default="pipeline_out", help="folder of the three outputs")
    parser.add_argument("-n", "--num-processes", type=int, default=2, help="worker processes (0: serial)")
    parser.add_argument("--md-steps", type=int, default=200, help="MD steps per structure")
    parser.add_argument("--structures", type=int, default=None, metavar="N",
                        help="take only the first N structures of the input (default all)")
    args = parser.parse_args(argv)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    inputs = args.input if args.structures is None else ase.io.read(args.input, f":{args.structures}", parallel=False)
    evaluated = run_pipeline(inputs, args.workdir, args.num_processes, md_steps=args.md_steps)
    print(summary(evaluated))


if __name__ == "__main__":
    main()
