"""Wrap a machine-learned potential as an ASE calculator: a warm model per worker, one GPU each.

A small neural-network potential written in numpy (an MLP of Gaussian radial features of the
neighbour distances within a cutoff; the energy is a sum of atomic energies, the forces its
analytic gradient) is wrapped as an ASE ``Calculator`` and run through
``wfl_like.calculators.generic.calculate`` as a spec ``(class, args, kwargs)``: each worker
builds the calculator, and so loads the model, once, and keeps it for every structure it is
given.  The script first writes the model's weights to the workdir (a random first layer and a
least-squares readout fitted to EMT energies: deterministic, the same on every run).

With ``WFL_TORCH_N_GPUS=2`` each of 2 workers is started with its own ``CUDA_VISIBLE_DEVICES``;
every output records which worker computed it, what that worker saw, and how many times its
process loaded the model.  A torch model would pick its device with ``device="cuda"`` there
(see ``docs/howto-wrap-calculator.md``).

Run from the repository root::

    WFL_TORCH_N_GPUS=2 python examples/ml_potential.py -n 2 --workdir ml_out
"""

import argparse
import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import ase.io
import numpy as np
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.neighborlist import neighbor_list

from wfl_like import ConfigSet, OutputSpec
from wfl_like.autoparallelize import worker_index
from wfl_like.calculators.generic import calculate

EXAMPLE_INPUT = Path(__file__).resolve().parent / "data" / "cu_rattled.xyz"
CUTOFF = 5.0           # Angstrom
N_FEATURES = 8
N_HIDDEN = 16
WIDTH = 2.0            # 1/A^2, of the Gaussians centred between 1.5 A and the cutoff

# Models loaded by this process: each output carries it, to show one load per worker.
_MODELS_LOADED = 0


def radial_features(atoms, centres):
    """Per-atom features and what their gradient needs.

    ``G[i, k] = sum_j exp(-WIDTH (d_ij - centres[k])^2) fc(d_ij)`` over the neighbours ``j``
    of ``i`` within ``CUTOFF`` (periodic images included), with the smooth cutoff
    ``fc(d) = (cos(pi d / CUTOFF) + 1) / 2``.

    Parameters
    ----------
    atoms : Atoms
        the structure
    centres : ndarray (n_features,)
        the centres of the Gaussians, in Angstrom

    Returns
    -------
    G : ndarray (n_atoms, n_features)
    pairs : tuple (i, j, d, D, dG)
        the neighbour pairs: indices, distances, vectors from ``i`` to ``j`` and
        ``dG[p, k]``, the derivative of pair ``p``'s term of ``G[i, k]`` with respect to ``d``
    """
    i, j, d, D = neighbor_list("ijdD", atoms, CUTOFF)
    fc = 0.5 * (np.cos(np.pi * d / CUTOFF) + 1.0)
    dfc = -0.5 * np.pi / CUTOFF * np.sin(np.pi * d / CUTOFF)
    gauss = np.exp(-WIDTH * (d[:, None] - centres) ** 2)
    terms = gauss * fc[:, None]
    dG = gauss * (-2.0 * WIDTH * (d[:, None] - centres) * fc[:, None] + dfc[:, None])
    G = np.zeros((len(atoms), len(centres)))
    np.add.at(G, i, terms)
    return G, (i, j, d, D, dG)


def energy_and_forces(atoms, model):
    """The model's energy (sum of atomic MLP outputs) and forces (its exact negative gradient).

    Parameters
    ----------
    atoms : Atoms
        the structure
    model : dict
        the weights, as :func:`write_weights` writes them

    Returns
    -------
    energy : float
        eV
    forces : ndarray (n_atoms, 3)
        eV/A
    """
    G, (i, j, d, D, dG) = radial_features(atoms, model["centres"])
    x = (G - model["mean"]) / model["scale"]
    h = np.tanh(x @ model["w1"] + model["b1"])
    energy = float((h @ model["w2"]).sum() + len(atoms) * model["b2"])
    # chain rule, atom by atom: dE/dG, then each pair term's distance to the two positions
    dE_dG = ((1.0 - h ** 2) * model["w2"]) @ model["w1"].T / model["scale"]
    along = (dE_dG[i] * dG).sum(axis=1)[:, None] * D / d[:, None]
    gradient = np.zeros((len(atoms), 3))
    np.add.at(gradient, j, along)
    np.add.at(gradient, i, -along)
    return energy, -gradient


class NumpyMLPotential(Calculator):
    """An ASE calculator for the numpy MLP potential whose weights are in ``weights``.

    Parameters
    ----------
    weights : str
        a JSON file written by :func:`write_weights`; read once, when the calculator
        is built (once per worker process under ``calculate``'s spec)
    """

    implemented_properties = ["energy", "forces"]

    def __init__(self, weights, **kwargs):
        super().__init__(**kwargs)
        global _MODELS_LOADED
        with open(weights) as f:
            self.model = {name: np.asarray(value) for name, value in json.load(f).items()}
        _MODELS_LOADED += 1

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        energy, forces = energy_and_forces(self.atoms, self.model)
        self.results = {"energy": energy, "forces": forces}
        if atoms is not None:
            # calculate() keeps only ASE's properties, so where it ran goes in the structure itself
            index = worker_index()
            atoms.info.update(ml_worker=-1 if index is None else index, ml_pid=os.getpid(),
                              ml_cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
                              ml_models_loaded=_MODELS_LOADED)


def training_cells(n=40, seed=7):
    """Rattled fcc Cu cells of several lattice constants, to fit the readout to.

    Parameters
    ----------
    n : int
        number of cells
    seed : int
        seed of their lattice constants and displacements

    Returns
    -------
    list of Atoms
    """
    rng = np.random.default_rng(seed)
    cells = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=rng.uniform(3.45, 3.75), cubic=True) * (2, 2, 2)
        atoms.positions += rng.normal(scale=rng.uniform(0.02, 0.12), size=atoms.positions.shape)
        cells.append(atoms)
    return cells


def write_weights(path, seed=0):
    """Write a model: a random first layer, and a linear readout fitted to EMT energies.

    The energy is linear in the readout (``w2``, ``b2``) once the first layer is fixed,
    so one least-squares solve fits it; the same seed gives the same file.

    Parameters
    ----------
    path : Path
        the JSON file to write
    seed : int
        seed of the first layer's weights
    """
    rng = np.random.default_rng(seed)
    cells = training_cells()
    centres = np.linspace(1.5, CUTOFF - 0.5, N_FEATURES)
    features = [radial_features(atoms, centres)[0] for atoms in cells]
    stacked = np.concatenate(features)
    mean, scale = stacked.mean(axis=0), stacked.std(axis=0) + 1e-12
    w1 = rng.normal(scale=1.0 / np.sqrt(N_FEATURES), size=(N_FEATURES, N_HIDDEN))
    b1 = rng.normal(scale=0.1, size=N_HIDDEN)
    design = np.array([np.append(np.tanh((G - mean) / scale @ w1 + b1).sum(axis=0), len(G)) for G in features])
    target = np.array([EMT().get_potential_energy(atoms) for atoms in cells])
    readout = np.linalg.solve(design.T @ design + 1e-6 * np.eye(N_HIDDEN + 1), design.T @ target)
    model = {"centres": centres, "mean": mean, "scale": scale, "w1": w1, "b1": b1, "w2": readout[:-1],
             "b2": readout[-1]}
    # JSON text holds every float exactly and, unlike a zip archive, no time stamp, so a rerun
    # writes the same bytes and the journal (which hashes the file) reuses the results
    Path(path).write_text(json.dumps({name: np.asarray(value).tolist() for name, value in model.items()}))


def wait_for_workers(directory, n_workers, timeout=120.0):
    """Initializer that holds each worker until ``n_workers`` have started.

    Only for the demonstration on a handful of structures, where the first worker could
    otherwise finish them all before the second is up; real runs do not need it.

    Parameters
    ----------
    directory : str
        an empty folder, where each worker leaves a file named after its process id
    n_workers : int
        how many workers to wait for
    timeout : float
        seconds to wait before raising TimeoutError
    """
    Path(directory, str(os.getpid())).touch()
    deadline = time.monotonic() + timeout
    while len(os.listdir(directory)) < n_workers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{n_workers} workers did not start within {timeout} s")
        time.sleep(0.02)


def run(inputs, workdir, num_processes, chunk_size, meet=False):
    """Write the weights, then evaluate ``inputs`` with the potential.

    Parameters
    ----------
    inputs : str or list of Atoms
        an input file, or structures
    workdir : Path
        where the weights (``mlp_weights.json``) and the output (``ml.xyz``) are written
    num_processes : int
        worker processes (0: serial)
    chunk_size : int
        structures per chunk
    meet : bool
        hold each worker at its start until all have started (see :func:`wait_for_workers`)

    Returns
    -------
    ConfigSet
        the evaluated structures, results under ``MLP_``
    """
    weights = workdir / "mlp_weights.json"
    write_weights(weights)
    autopara = {"num_python_subprocesses": num_processes, "num_inputs_per_python_subprocess": chunk_size,
                # the weights are opened by path, which the journal cannot see: name them
                "cache_extra": [weights]}
    # no more workers start than there are chunks, so meet only as many as will start
    n_chunks = -(-sum(1 for _ in ConfigSet(inputs)) // chunk_size) if meet else 0
    if min(num_processes, n_chunks) > 1:
        barrier = workdir / "started"
        shutil.rmtree(barrier, ignore_errors=True)
        barrier.mkdir()
        autopara["initializer"] = (wait_for_workers, [str(barrier), min(num_processes, n_chunks)])
    return calculate(ConfigSet(inputs), OutputSpec("ml.xyz", file_root=workdir),
                     (NumpyMLPotential, [], {"weights": str(weights)}), properties=["energy", "forces"],
                     output_prefix="MLP_", autopara_info=autopara)


def summary(evaluated):
    """Lines saying where the structures were computed and how the model compares with EMT.

    Parameters
    ----------
    evaluated : ConfigSet
        what :func:`run` returned

    Returns
    -------
    list of str
    """
    frames = list(evaluated)
    lines = [f"{len(frames)} structures; WFL_TORCH_N_GPUS={os.environ.get('WFL_TORCH_N_GPUS', 'unset')}"]
    per_worker = Counter((int(a.info["ml_worker"]), str(a.info["ml_cuda_visible_devices"]),
                          int(a.info["ml_models_loaded"])) for a in frames)
    for (worker, visible, loads), count in sorted(per_worker.items()):
        who = "driver (serial)" if worker < 0 else f"worker {worker}"
        lines.append(f"{who}: CUDA_VISIBLE_DEVICES={visible}, model loaded {loads} time(s), {count} structures")
    errors = [(a.info["MLP_energy"] - EMT().get_potential_energy(a)) / len(a) for a in frames]
    lines.append(f"MLP - EMT energy per atom: RMS {np.sqrt(np.mean(np.square(errors))) * 1000:.1f} meV")
    return lines


def main(argv=None):
    """Run the example; ``argv`` as on the command line (default ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default=str(EXAMPLE_INPUT), help="input structures (default: the bundled Cu cells)")
    parser.add_argument("--workdir", default="ml_out", help="folder of the weights and the output")
    parser.add_argument("-n", "--num-processes", type=int, default=2, help="worker processes (0: serial)")
    parser.add_argument("--chunk-size", type=int, default=4, help="structures per chunk")
    parser.add_argument("--structures", type=int, default=None, metavar="N",
                        help="take only the first N structures of the input (default all)")
    parser.add_argument("--meet", action="store_true",
                        help="hold each worker at its start until all have started, so that every "
                             "worker computes some of a few structures")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    inputs = args.input if args.structures is None else ase.io.read(args.input, f":{args.structures}", parallel=False)
    print("\n".join(summary(run(inputs, workdir, args.num_processes, args.chunk_size, args.meet))))


if __name__ == "__main__":
    main()
