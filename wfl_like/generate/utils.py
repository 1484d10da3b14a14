"""Helpers shared by the structure-generating operations."""

CONFIG_TYPE_ACTIONS = ("append", "overwrite")


def save_config_type(atoms, action, config_type):
    """Record in ``atoms.info["config_type"]`` what made this structure.

    Parameters
    ----------
    atoms : ase.Atoms
        The structure to label.
    action : {"append", "overwrite"} or False/None
        ``"append"`` adds ``":" + config_type`` to an existing ``config_type`` (or sets it
        when there is none); ``"overwrite"`` replaces it; a false value leaves it alone.
    config_type : str
        The label, e.g. ``"optimize_last_converged"`` or ``"MD"``.

    Raises
    ------
    ValueError
        ``action`` is none of these.
    """
    check_config_type_action(action)
    if not action:
        return
    if action == "append" and "config_type" in atoms.info:
        atoms.info["config_type"] = f"{atoms.info['config_type']}:{config_type}"
    else:
        atoms.info["config_type"] = config_type


def check_config_type_action(action, name="update_config_type"):
    """Refuse, before any work, an ``update_config_type`` that :func:`save_config_type` cannot do.

    Raises
    ------
    ValueError
        ``action`` is true but neither ``"append"`` nor ``"overwrite"``.
    """
    if action and action not in CONFIG_TYPE_ACTIONS:
        raise ValueError(f"{name} must be 'append', 'overwrite' or False, not {action!r}")
