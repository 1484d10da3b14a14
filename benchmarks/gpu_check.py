"""Device check: a small torch potential run in 2 workers, one GPU each (``WFL_TORCH_N_GPUS``).

Where torch and CUDA are present, a tiny neural-network potential (an MLP over radial
features, forces by autograd), wrapped as an ASE calculator and built once per worker
by the initializer, evaluates a few rattled Cu clusters in 2 worker processes with
``WFL_TORCH_N_GPUS`` set to the number of GPUs visible (at most 2).  It prints, for each
worker, its index, the ``CUDA_VISIBLE_DEVICES`` it was started with and the GPU it used
(name and UUID), then compares the energies with a run in this process.

Exit status: 0 when each worker used the device it was given (two distinct GPUs with 2
or more, one shared GPU with 1) and the energies agree; 1 otherwise; 0 with a "no CUDA
here" line where torch or a GPU is missing.

    python benchmarks/gpu_check.py [--n 8] [--atoms 32]
"""

import argparse
import math
import os
import sys

# The driver asks torch about CUDA, which rules out forking workers afterwards.
os.environ.setdefault("WFL_LIKE_START_METHOD", "spawn")

_model = None


def build_potential():
    """Initializer: the worker's potential, on its one visible GPU (``cuda:0``)."""
    global _model
    _model = TinyTorchPotential("cuda:0")


class TinyTorchPotential:
    """An ASE calculator: energy = sum over atoms of an MLP of radial features."""

    implemented_properties = ("energy", "forces")

    def __init__(self, device, cutoff=5.0, n_features=8):
        import torch
        from ase.calculators.calculator import Calculator

        # the same weights in every process: outputs do not depend on where they ran
        generator = torch.Generator().manual_seed(0)
        self.torch, self.device, self.cutoff = torch, device, cutoff
        self.centres = torch.linspace(1.5, cutoff, n_features, dtype=torch.float64).to(device)
        layers = [torch.nn.Linear(n_features, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)]
        for layer in layers[::2]:
            with torch.no_grad():
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.3)
                layer.bias.zero_()
        self.mlp = torch.nn.Sequential(*layers).to(device=device, dtype=torch.float64)
        self.calculator = _as_calculator(self, Calculator)

    def energy_forces(self, positions):
        torch = self.torch
        r = torch.tensor(positions, dtype=torch.float64, device=self.device, requires_grad=True)
        diff = r[:, None, :] - r[None, :, :]
        dist = torch.sqrt((diff ** 2).sum(-1) + torch.eye(len(r), dtype=r.dtype, device=r.device))
        smooth = torch.where(dist < self.cutoff, 0.5 * (torch.cos(math.pi * dist / self.cutoff) + 1), 0.0)
        smooth = smooth * (1 - torch.eye(len(r), dtype=r.dtype, device=r.device))
        features = (torch.exp(-(dist[..., None] - self.centres) ** 2) * smooth[..., None]).sum(1)
        energy = self.mlp(features).sum()
        (grad,) = torch.autograd.grad(energy, r)
        return float(energy), (-grad).cpu().numpy()


def _as_calculator(potential, calculator_class):
    class Calculator(calculator_class):
        implemented_properties = list(potential.implemented_properties)

        def calculate(self, atoms=None, properties=None, system_changes=None):
            super().calculate(atoms, properties, system_changes)
            energy, forces = potential.energy_forces(self.atoms.positions)
            self.results = {"energy": energy, "forces": forces}

    return Calculator()


def wait_for_both(barrier, parties=2, timeout=300.0):
    """Hold a worker's first structure until ``parties`` workers have started one, so that
    both workers compute (a fast one would otherwise take every structure)."""
    import time

    open(os.path.join(barrier, str(os.getpid())), "w").close()
    deadline = time.monotonic() + timeout
    while len(os.listdir(barrier)) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{parties} workers did not start within {timeout} s")
        time.sleep(0.05)


def evaluate(items, barrier=None):
    """The operation: the worker's potential on each structure, and where it ran."""
    from wfl_like.autoparallelize import worker_index

    if barrier is not None:
        wait_for_both(barrier)
    torch = _model.torch
    props = torch.cuda.get_device_properties(0)
    identity = getattr(props, "uuid", None) or getattr(props, "pci_bus_id", None) or "?"
    for atoms in items:
        atoms.calc = _model.calculator
        atoms.info["energy"] = atoms.get_potential_energy()
        atoms.info.update(worker=worker_index(), visible=os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
                          gpu=props.name, uuid=str(identity), pid=os.getpid())
        atoms.calc = None
    return items


def clusters(n, n_atoms):
    import numpy as np
    from ase.build import bulk

    rng = np.random.default_rng(3)
    out = []
    for _ in range(n):
        atoms = (bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2))[:n_atoms]
        atoms.pbc = False
        atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
        out.append(atoms)
    return out


def cuda_devices():
    """GPUs torch sees here, or a sentence saying why there are none."""
    try:
        import torch
    except ImportError:
        return "no CUDA here: torch is not installed"
    if not torch.cuda.is_available():
        return f"no CUDA here: torch {torch.__version__} sees no CUDA device"
    return torch.cuda.device_count()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="structures (default 8)")
    parser.add_argument("--atoms", type=int, default=32, help="atoms per structure (default 32)")
    args = parser.parse_args(argv)
    found = cuda_devices()
    if isinstance(found, str):
        print(found + "; nothing to check")
        return 0
    n_gpus = min(found, 2)
    os.environ["WFL_TORCH_N_GPUS"] = str(n_gpus)

    import tempfile

    from wfl_like import ConfigSet, OutputSpec
    from wfl_like.autoparallelize import autoparallelize
    from wfl_like.autoparallelize.workers.devices import device_plan

    inputs = clusters(args.n, args.atoms)
    with tempfile.TemporaryDirectory() as barrier:
        parallel = list(autoparallelize(evaluate, ConfigSet(inputs), OutputSpec(), barrier, autopara_info={
            "num_python_subprocesses": 2, "initializer": (build_potential, [])}))
    return report(parallel, inputs, device_plan(), found)


def report(parallel, inputs, plan, found):
    n_gpus = len(plan)
    build_potential()      # the same potential in this process, for the reference energies
    serial = [a.info["energy"] for a in evaluate([a.copy() for a in inputs])]
    workers = {}
    for atoms in parallel:
        info = atoms.info
        row = workers.setdefault(info["worker"], dict(info, items=0))
        row["items"] += 1
    print(f"{found} CUDA device(s) visible; WFL_TORCH_N_GPUS={n_gpus}; 2 workers "
          f"(start method {os.environ['WFL_LIKE_START_METHOD']})")
    for index, row in sorted(workers.items()):
        print(f"worker {index}: pid {row['pid']} CUDA_VISIBLE_DEVICES={row['visible']} -> {row['gpu']} "
              f"uuid {row['uuid']}, {row['items']} structures")
    diff = max(abs(a.info["energy"] - e) for a, e in zip(parallel, serial))
    print(f"largest energy difference from a run in the driver: {diff:.3g} eV")
    distinct = len({row["uuid"] for row in workers.values()})
    ok = (sorted(workers) == [0, 1] and distinct == n_gpus and diff < 1e-8
          and all(row["visible"] == plan[index % n_gpus] for index, row in workers.items()))
    print("OK: each worker used its own device" if ok and n_gpus == 2 else
          "OK: both workers shared the one device" if ok else "FAILED: see above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
