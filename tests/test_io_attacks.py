"""Attacks on the fast extended XYZ paths: odd structures, odd files, odd caches.

Each test here is an input that once broke the promise of :mod:`wfl_like.io.fastwrite`,
:mod:`wfl_like.io.fastread` or :mod:`wfl_like.io.frames` (the same bytes as ASE's writer,
the same structures as ASE's reader, or a clear error naming the file and frame), kept so
that it cannot break again.
"""

import io
import warnings

import ase.io
import numpy as np
from ase.build import bulk

from wfl_like.io.fastwrite import extxyz_text
from wfl_like.io.render import WRITER_ENV, render


def ase_text(atoms):
    buffer = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ase.io.write(buffer, atoms, format="extxyz", parallel=False)
    return buffer.getvalue()


def cu_cell():
    return bulk("Cu", cubic=True)


# --- the writer -------------------------------------------------------------------------


def test_masked_array_in_info_is_written_as_ase_writes_it(monkeypatch):
    # a masked item prints as '--' in ASE's text; its tolist() gives None
    atoms = cu_cell()
    atoms.info["partly"] = np.ma.array([1, 2], mask=[False, True])
    want = ase_text(atoms)
    assert ' partly="1 --" ' in want
    fast = extxyz_text(atoms)
    assert fast is None or fast == want
    monkeypatch.setenv(WRITER_ENV, "auto")
    assert render(atoms, {"format": "extxyz"}) == want
