"""Small helpers shared by the tests."""


def listing(directory):
    """Sorted names in ``directory``, leaving out the run journal (``.NAME.journal.sqlite``
    and SQLite's companions), which a run keeps beside its outputs on purpose."""
    return sorted(p.name for p in directory.iterdir() if ".journal.sqlite" not in p.name)
