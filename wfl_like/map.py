"""Apply any per-structure function to many structures: :func:`map`."""

from wfl_like.autoparallelize import autoparallelize


def _map_op(atoms_list, map_func, args=None, kwargs=None):
    args, kwargs = args or (), kwargs or {}
    return [map_func(atoms, *args, **kwargs) for atoms in atoms_list]


def map(inputs, outputs, map_func, args=None, kwargs=None, autopara_info=None):
    """Apply ``map_func(atoms, *args, **kwargs)`` to every structure of ``inputs``.

    Parameters
    ----------
    inputs : iterable of Atoms
        Input structures, usually a ConfigSet.
    outputs : OutputSpec or None
        Where the results go.
    map_func : callable
        Returns an ``Atoms``, a list of ``Atoms``, or ``None`` to leave the structure out.
    args : sequence, optional
        Extra positional arguments of ``map_func``.
    kwargs : dict, optional
        Extra keyword arguments of ``map_func``.
    autopara_info : AutoparaInfo or dict, optional
        How to parallelize.

    Returns
    -------
    ConfigSet or None
        The results (None when outputs is None).
    """
    return autoparallelize(_map_op, inputs, outputs, map_func, args=args, kwargs=kwargs,
                           autopara_info=autopara_info)
