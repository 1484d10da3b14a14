"""Write the bundled example input: rattled fcc Cu cells (deterministic).

Run from the repository root: python examples/make_example_data.py
"""

from pathlib import Path

import ase.io
import numpy as np
from ase.build import bulk


def rattled_copper(n_structures=40, repeat=(2, 2, 2), seed=2024):
    """``n_structures`` fcc Cu cells with lattice constants around 3.6 A and rattled atoms."""
    rng = np.random.default_rng(seed)
    structures = []
    for i in range(n_structures):
        atoms = bulk("Cu", "fcc", a=rng.uniform(3.5, 3.7), cubic=True) * repeat
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.info["config_type"] = "rattled_fcc"
        atoms.info["structure_id"] = i
        structures.append(atoms)
    return structures


if __name__ == "__main__":
    path = Path(__file__).parent / "data" / "cu_rattled.xyz"
    ase.io.write(path, rattled_copper(), format="extxyz")
    print(f"wrote {path}")
