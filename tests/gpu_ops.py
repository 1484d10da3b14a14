"""Operations for the GPU-worker tests: run in workers, they report the device and index they were given.

This module reads ``CUDA_VISIBLE_DEVICES`` when it is imported, as a library that
picks its GPU at import would: a spawned worker imports it afresh.
"""

import importlib
import json
import os
import time

from wfl_like import ConfigSet, OutputSpec
from wfl_like.autoparallelize import autoparallelize, worker_index

VISIBLE = "CUDA_VISIBLE_DEVICES"
SEEN_AT_IMPORT = os.environ.get(VISIBLE, "unset")

# Imported by the operation only, never by the tests' own process, so that a forked
# worker imports it for the first time, after its device was set.
PROBE_MODULE = "gpu_import_probe"


def wait_for_parties(barrier, parties, timeout=60.0):
    """Hold until ``parties`` processes have each reached ``barrier`` (a directory)."""
    open(os.path.join(barrier, str(os.getpid())), "w").close()
    deadline = time.monotonic() + timeout
    while len(os.listdir(barrier)) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{parties} processes did not reach the barrier in {timeout} s")
        time.sleep(0.02)


def where_am_i():
    """``{index, visible, pid, probe_saw, module_saw}`` of this process (index -1: none)."""
    probe = importlib.import_module(PROBE_MODULE)
    index = worker_index()
    return {"index": -1 if index is None else index, "visible": os.environ.get(VISIBLE, "unset"),
            "pid": os.getpid(), "probe_saw": probe.SEEN_AT_IMPORT, "module_saw": SEEN_AT_IMPORT}


def record_device(items, barrier=None, parties=0):
    """Write into each structure's info where it was computed, after a barrier of ``parties`` processes."""
    if barrier is not None:
        wait_for_parties(barrier, parties)
    here = where_am_i()
    for atoms in items:
        atoms.info.update(here)
    return items


def record_nested(items):
    """Run :func:`record_device` on the items by a nested (serial) autoparallelized call."""
    return list(autoparallelize(record_device, ConfigSet(items), OutputSpec()))


def note_initializer(directory):
    """Initializer: leave a file named by the pid saying what the initializer saw."""
    with open(os.path.join(directory, str(os.getpid())), "w") as f:
        json.dump(where_am_i(), f)


def probe_task(barrier, parties):
    """A task for a WorkerPool: :func:`where_am_i` after a barrier of ``parties`` processes."""
    wait_for_parties(barrier, parties)
    return where_am_i()


def touch_and_return(items, marker):
    """Leave ``marker`` (a file) to show the operation ran."""
    open(marker, "w").close()
    return items
