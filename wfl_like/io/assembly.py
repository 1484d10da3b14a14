"""``Atoms`` from a parsed frame's parts, as ASE's extended-XYZ reader builds them.

The reader has the comment line's values (``info``, typed as ASE types them) and the atom
columns (``arrays``, under ASE's names and dtypes).  :func:`assemble` turns them into
the ``Atoms`` that ``ase.io.read`` returns: the same attributes, values, dtypes, order
and sharing, calculator results included.

ASE's own steps (``Atoms(...)``, then ``set_calc_and_arrays``) cost more than parsing.
For frames of a layout seen before (the same info keys and value kinds, the same
columns), :class:`_Layout` builds the objects directly (:mod:`wfl_like.structures`).
The first frame of every layout in a process is built both ways and compared with
:func:`~wfl_like.structures.same_objects`; a layout whose two results differ in any
respect, or that holds what the direct way does not cover (constraints, a Z column of
symbols, a cell given otherwise than as a lattice), keeps ASE's steps for good.  So the direct
way is only ever taken where it was seen to give ASE's result.
"""

import copy
from functools import lru_cache

import numpy as np

from wfl_like.structures import ResultsCalculator, atoms_from_parts, same_objects

# layouts met in this process, each a _Layout or None (ASE's steps); bounded, as a cache
_LAYOUTS = {}
_LAYOUT_LIMIT = 1024
# calculator results ASE keeps as given; it makes float arrays of the others
_KEPT_RESULTS = frozenset({"energy", "magmom", "free_energy"})


def assemble(info, arrays, move_mask_columns=None):
    """The ``Atoms`` of a frame, built from ``info`` and ``arrays`` (both taken over).

    Parameters
    ----------
    info : dict
        The comment line's values, typed as ASE's parser types them (``Lattice``,
        ``pbc`` and ``Properties`` among them, the last removed already).
    arrays : dict of str to numpy.ndarray
        The atom columns under ASE's names (``numbers`` or ``symbols``, ``positions``,
        ``move_mask``, ...), with the dtypes ASE's reader gives them.
    move_mask_columns : int, optional
        The number of columns of ``move_mask``, where the frame has one.
    """
    key = _layout_key(info, arrays)
    layout = _LAYOUTS.get(key, False)
    if layout is False:
        return _first_of_layout(key, info, arrays, move_mask_columns)
    if layout is None:
        return assemble_as_ase(info, arrays, move_mask_columns)
    return layout.build(info, arrays)


def forget_layouts():
    """Forget the layouts learnt so far: the next frame of each is built both ways and compared again."""
    _LAYOUTS.clear()


def _layout_key(info, arrays):
    return (tuple((name, type(value), getattr(value, "shape", None), getattr(value, "dtype", None))
                  for name, value in info.items()),
            tuple((name, value.dtype, value.shape[1:]) for name, value in arrays.items()))


def _first_of_layout(key, info, arrays, move_mask_columns):
    """ASE's result for the frame, after learning whether its layout may be built directly."""
    layout = _Layout.planned(info, arrays)
    trial = None
    if layout is not None:
        try:
            trial = layout.parts(copy.deepcopy(info), {name: value.copy(order="K") for name, value in arrays.items()})
        except Exception:
            layout = None   # what ASE makes of this frame (an error of its own, perhaps), ASE makes
    atoms = assemble_as_ase(info, arrays, move_mask_columns)
    if layout is not None:
        layout.learn_calculator(atoms)
        if not layout.usable or not same_objects(atoms, layout.attached(*trial)):
            layout = None
    if len(_LAYOUTS) < _LAYOUT_LIMIT:
        _LAYOUTS[key] = layout
    return atoms


class _Layout:
    """How frames of one layout are built without ASE's constructors.

    Made by :meth:`planned` from the first frame's parts; its calculator part is learnt
    from the calculator ASE made for that frame (:meth:`learn_calculator`).
    """

    def __init__(self, pbc_default, result_columns, result_keys):
        self.pbc_default = pbc_default
        self.result_columns = result_columns
        self.result_keys = result_keys
        self.calculator = None
        self.usable = True

    @classmethod
    def planned(cls, info, arrays):
        """The layout of a frame with these parts, or None where only ASE's steps will do."""
        from ase.calculators.calculator import all_properties
        from ase.io.extxyz import per_config_properties

        if "positions" not in arrays or "move_mask" in arrays or ("numbers" in arrays) == ("symbols" in arrays):
            return None
        if "numbers" in arrays and arrays["numbers"].dtype.kind not in "iu":
            return None     # a Z column of symbols: Atoms takes them as chemical symbols
        lattice = info.get("Lattice")
        if lattice is not None and not (isinstance(lattice, np.ndarray) and lattice.shape == (3, 3)):
            return None
        named = {"numbers", "symbols", "positions", "initial_charges"}
        result_columns = tuple(name for name in arrays if name not in named and name in all_properties)
        result_keys = tuple(key for key in info if key not in ("pbc", "Lattice") and key in per_config_properties)
        pbc_default = lattice is not None
        return cls(pbc_default, result_columns, result_keys)

    def learn_calculator(self, atoms):
        """Take the calculator ASE attached to ``atoms`` (the frame's ASE result) as the template."""
        calc = atoms.calc
        if not (self.result_columns or self.result_keys):
            self.usable = calc is None
            return
        self.calculator = ResultsCalculator(calc) if calc is not None else None
        self.usable = self.calculator is not None and self.calculator.usable

    def build(self, info, arrays):
        """The frame's ``Atoms`` from its parts (taken over)."""
        return self.attached(*self.parts(info, arrays))

    def parts(self, info, arrays):
        """``(atoms, results)``: the frame's ``Atoms`` without its calculator, and the calculator's results."""
        cell = np.zeros((3, 3))
        pbc = np.zeros(3, bool)
        if "pbc" in info:
            pbc[:] = info.pop("pbc")
        elif self.pbc_default:
            pbc[:] = True
        if "Lattice" in info:
            # the extended-XYZ lattice holds the cell vectors as columns
            cell[:] = info.pop("Lattice").T
        own = {}
        if "numbers" in arrays:
            own["numbers"] = np.array(arrays.pop("numbers"), int, order="C")
        else:
            own["numbers"] = _numbers_of(arrays.pop("symbols"))
        own["positions"] = np.array(arrays.pop("positions"), float, order="C")
        if "initial_charges" in arrays:
            own["initial_charges"] = np.array(arrays.pop("initial_charges"), float, order="C")
        results = {}
        for name, value in arrays.items():
            if name in self.result_columns:
                results[name] = value
            else:
                own[name] = value.copy() if value.flags.c_contiguous else np.ascontiguousarray(value)
        for key in self.result_keys:
            value = info.pop(key)
            if key == "stress" and isinstance(value, np.ndarray) and value.shape == (3, 3):
                # ASE keeps a stress of the comment line in Voigt order (xx, yy, zz, yz, xz, xy);
                # a per-atom column named stress is left as it is, whatever the number of atoms
                value = value[(0, 1, 2, 1, 0, 0), (0, 1, 2, 2, 2, 1)]
            results[key] = value
        return atoms_from_parts(cell, pbc, own, info), results

    def attached(self, atoms, results):
        """``atoms`` with a calculator holding ``results``, made as ASE makes it (none for no results)."""
        if not results:
            return atoms
        kept = {name: value if name in _KEPT_RESULTS else np.array(value, float) for name, value in results.items()}
        return self.calculator.attach(atoms, kept)


def _numbers_of(symbols):
    return np.array([_atomic_number(s) for s in symbols.tolist()], dtype=int)


@lru_cache(maxsize=512)
def _atomic_number(symbol):
    from ase.data import atomic_numbers

    return atomic_numbers[symbol.capitalize()]


def assemble_as_ase(info, arrays, move_mask_columns=None):
    """The frame's ``Atoms`` built in the steps of ASE's extended-XYZ reader (see :func:`assemble`)."""
    from ase import Atoms
    from ase.constraints import FixAtoms, FixCartesian
    from ase.io.extxyz import set_calc_and_arrays

    pbc = None
    if "pbc" in info:
        pbc = info.pop("pbc")
    elif "Lattice" in info:
        pbc = [True, True, True]
    cell = None
    if "Lattice" in info:
        cell = info.pop("Lattice").T
    numbers = arrays.pop("numbers", None)
    symbols = arrays.pop("symbols", None)
    if numbers is None and symbols is not None:
        atoms = Atoms(numbers=_numbers_of(symbols), positions=arrays.pop("positions", None),
                      charges=arrays.pop("initial_charges", None), cell=cell, pbc=pbc, info=info)
    else:
        # a Z column is given to Atoms as its first argument, as ASE does: strings in it are
        # chemical symbols then, not numbers
        atoms = Atoms(numbers, positions=arrays.pop("positions", None), charges=arrays.pop("initial_charges", None),
                      cell=cell, pbc=pbc, info=info)
    if "move_mask" in arrays:
        move_mask = arrays.pop("move_mask").astype(bool)
        n_atoms = len(atoms)
        if move_mask_columns == 3:
            atoms.set_constraint([FixCartesian(a, mask=~move_mask[a, :]) for a in range(n_atoms)])
        elif move_mask_columns == 1:
            atoms.set_constraint(FixAtoms(mask=~move_mask))
        else:
            raise ValueError("move_mask of neither 1 nor 3 columns")
    set_calc_and_arrays(atoms, arrays)
    return atoms
