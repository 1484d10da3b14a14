"""Scatter, map, gather: split a dataset, evaluate the pieces in parallel, reduce to statistics.

The bundled rattled Cu cells are split by volume per atom into a few groups, one file per
group (scatter).  Every group is evaluated with two potentials, EMT and Lennard-Jones, as two
independent calls that run at the same time (``autopara_info={"wait": False}`` returns a
``concurrent.futures.Future`` at once), each spreading its structures over its own workers
(map).  The results are then gathered from the futures into per-group statistics (mean and
spread of the energy per atom, largest force) and a text histogram (reduce), printed and
written to ``summary.txt``.  ``--sequential`` runs the two calls one after the other instead:
the output files and the summary are the same, byte for byte.

Run from the repository root::

    python examples/scatter_gather.py -n 2 --workdir scatter_out
"""

import argparse
from pathlib import Path

import ase.io
import numpy as np
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones

from wfl_like import ConfigSet, OutputSpec
from wfl_like.calculators.generic import calculate

EXAMPLE_INPUT = Path(__file__).resolve().parent / "data" / "cu_rattled.xyz"
# Lennard-Jones parameters that roughly fit copper
LJ_CU = {"sigma": 2.33, "epsilon": 0.41, "rc": 6.0}
POTENTIALS = {"EMT": (EMT, [], {}), "LJ": (LennardJones, [], LJ_CU)}


def scatter(structures, n_groups, workdir):
    """Write the structures to ``n_groups`` files, grouped by volume per atom.

    Parameters
    ----------
    structures : list of Atoms
        the dataset
    n_groups : int
        number of groups; the group edges are quantiles of the volume per atom, so the
        groups are about the same size
    workdir : Path
        the files are ``workdir/pieces/group_K.xyz``

    Returns
    -------
    list of Path
        the group files, in group order
    """
    volumes = np.array([atoms.get_volume() / len(atoms) for atoms in structures])
    edges = np.quantile(volumes, np.linspace(0, 1, n_groups + 1)[1:-1])
    group_of = np.searchsorted(edges, volumes, side="right")
    pieces = workdir / "pieces"
    pieces.mkdir(parents=True, exist_ok=True)
    files = []
    for group in range(n_groups):
        members = [atoms for atoms, g in zip(structures, group_of) if g == group]
        for atoms in members:
            atoms.info["group"] = group
        path = pieces / f"group_{group}.xyz"
        # a rerun writes the same bytes, so the evaluations' journals see unchanged inputs
        ase.io.write(path, members, format="extxyz", parallel=False)
        files.append(path)
    return files


def evaluate(group_files, workdir, num_processes, wait):
    """Evaluate every group with each potential of ``POTENTIALS``.

    With ``wait=False`` both calls are made before either is done and each returns a Future:
    they run at the same time, each with its own ``num_processes`` workers.

    Parameters
    ----------
    group_files : list of Path
        the groups, one file each
    workdir : Path
        the outputs go to ``workdir/NAME/group_K.xyz``, one file per input file
    num_processes : int
        worker processes of each call (0: serial)
    wait : bool
        True: each call returns when it is done; False: at once, with a Future

    Returns
    -------
    dict
        ``{name: ConfigSet}``, or ``{name: concurrent.futures.Future}`` when ``wait`` is False
    """
    runs = {}
    for name, spec in POTENTIALS.items():
        outputs = OutputSpec([f"group_{k}.xyz" for k in range(len(group_files))], file_root=workdir / name)
        runs[name] = calculate(ConfigSet(group_files), outputs, spec, properties=["energy", "forces"],
                               output_prefix=f"{name}_", autopara_info={"wait": wait,
                                                                        "num_python_subprocesses": num_processes})
    return runs


def group_statistics(evaluated, name):
    """Per group: number of structures, mean and spread of the energy per atom, largest force.

    Parameters
    ----------
    evaluated : ConfigSet
        what a call returned: one group per input file (``groups()``)
    name : str
        the potential's name, the prefix of its results (``EMT_energy``, ``EMT_forces``)

    Returns
    -------
    list of dict
        one per group: ``n``, ``mean``, ``std`` (eV/atom) and ``max_force`` (eV/A)
    """
    rows = []
    for group in evaluated.groups():
        frames = list(group)
        if not frames:
            # ties in the volumes can leave a group empty: a row of its own, not an error
            rows.append({"n": 0, "mean": np.nan, "std": np.nan, "max_force": np.nan})
            continue
        per_atom = np.array([atoms.info[f"{name}_energy"] / len(atoms) for atoms in frames])
        max_force = max(float(np.linalg.norm(atoms.arrays[f"{name}_forces"], axis=1).max()) for atoms in frames)
        rows.append({"n": len(frames), "mean": float(per_atom.mean()), "std": float(per_atom.std()),
                     "max_force": max_force})
    return rows


def histogram(values, bins=8, width=30):
    """A text histogram: one line per bin, with its range, its count and a bar.

    Parameters
    ----------
    values : sequence of float
        the values to count
    bins : int
        number of bins, of equal width between the smallest and largest value
    width : int
        characters of the longest bar

    Returns
    -------
    list of str
    """
    counts, edges = np.histogram(values, bins=bins)
    longest = max(counts.max(), 1)
    return [f"  [{lo:8.4f}, {hi:8.4f})  {count:3d} {'#' * round(width * count / longest)}".rstrip()
            for lo, hi, count in zip(edges[:-1], edges[1:], counts)]


def summary(results):
    """The lines of the report: a table of the groups, then a histogram of the EMT energies.

    Parameters
    ----------
    results : dict
        ``{name: ConfigSet}`` of the evaluations, ``"EMT"`` among them

    Returns
    -------
    list of str
    """
    stats = {name: group_statistics(evaluated, name) for name, evaluated in results.items()}
    names = list(stats)
    lines = [f"{sum(row['n'] for row in stats[names[0]])} structures in {len(stats[names[0]])} groups; "
             "energy per atom (mean, std) in eV, largest force in eV/A",
             f"{'group':>5} {'n':>3}" + "".join(f"  {name + ' E/atom':>12} {'(std)':>9} {name + ' max|F|':>12}"
                                             for name in names)]
    for group, rows in enumerate(zip(*stats.values())):
        cells = "".join(f"  {row['mean']:12.5f} ({row['std']:7.5f}) {row['max_force']:12.4f}" for row in rows)
        lines.append(f"{group:5d} {rows[0]['n']:3d}{cells}")
    emt_per_atom = [atoms.info["EMT_energy"] / len(atoms) for atoms in results["EMT"]]
    lines.append("EMT energy per atom, eV:")
    lines.extend(histogram(emt_per_atom))
    return lines


def main(argv=None):
    """Run the example; ``argv`` as on the command line (default ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default=str(EXAMPLE_INPUT), help="input structures (default: the bundled Cu cells)")
    parser.add_argument("--workdir", default="scatter_out", help="folder of the pieces, the outputs and the summary")
    parser.add_argument("-n", "--num-processes", type=int, default=2, help="worker processes per call (0: serial)")
    parser.add_argument("--groups", type=int, default=4, help="number of groups to split the dataset into")
    parser.add_argument("--structures", type=int, default=None, metavar="N",
                        help="take only the first N structures of the input (default all)")
    parser.add_argument("--sequential", action="store_true",
                        help="run the two evaluations one after the other instead of at the same time")
    args = parser.parse_args(argv)
    if args.groups < 1:
        parser.error("--groups must be at least 1")
    workdir = Path(args.workdir)
    index = ":" if args.structures is None else f":{args.structures}"
    group_files = scatter(ase.io.read(args.input, index, parallel=False), args.groups, workdir)

    runs = evaluate(group_files, workdir, args.num_processes, wait=args.sequential)
    # gather: result() waits for a call and gives its ConfigSet, or raises what made it fail
    results = {name: run if args.sequential else run.result() for name, run in runs.items()}

    lines = summary(results)
    (workdir / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
