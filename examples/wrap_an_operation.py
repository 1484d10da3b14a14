"""Wrap a new operation with one decorator and run it on 2 worker processes.

Run from the repository root: python examples/wrap_an_operation.py
"""

import numpy as np
from ase.calculators.emt import EMT

from wfl_like import ConfigSet, OutputSpec
from wfl_like.autoparallelize import autoparallelized


@autoparallelized(num_inputs_per_python_subprocess=5)
def rattle_and_evaluate(atoms_list, stdev, _autopara_per_item_info=None):
    """Rattle each structure and evaluate EMT on it.

    Parameters
    ----------
    atoms_list : list(Atoms)
        structures
    stdev : float
        standard deviation of the displacements, in Angstrom
    """
    outputs = []
    for atoms, item in zip(atoms_list, _autopara_per_item_info):
        atoms.positions += item["rng"].normal(scale=stdev, size=atoms.positions.shape)
        atoms.calc = EMT()
        atoms.info["emt_energy"] = atoms.get_potential_energy()
        atoms.calc = None
        outputs.append(atoms)
    return outputs


if __name__ == "__main__":
    result = rattle_and_evaluate(ConfigSet("examples/data/cu_rattled.xyz"), OutputSpec("rattled.xyz"),
                                 0.02, rng=np.random.default_rng(1),
                                 autopara_info={"num_python_subprocesses": 2})
    print([float(atoms.info["emt_energy"]) for atoms in result][:3])
