"""Operations run on every backend by the MPI and Dask tests: importable by their driver scripts and workers."""


def rattle(items, _autopara_per_item_info=None):
    """Move every atom by a draw from the item's own generator."""
    for atoms, item in zip(items, _autopara_per_item_info):
        atoms.positions += item["rng"].normal(scale=0.01, size=atoms.positions.shape)
    return items


def refuse_5(items):
    """Fail on the structure whose ``structure_id`` is 5."""
    for atoms in items:
        if atoms.info["structure_id"] == 5:
            raise ValueError("structure 5 is refused")
    return items
