"""The driver's cost per item for the journal on the frames path: keys, lookups, records.

Journals N frames of 32-atom Cu cells (with energy, forces and stress) the way a run does:
a first run (a key and a lookup per item, one record per chunk of 100), then a rerun that
finds every item.  Prints microseconds per item and the journal's size, with the texts
compressed (the default rule) and kept plain.

    python benchmarks/bench_journal.py [--frames 50000]
"""

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from wfl_like import OutputSpec
from wfl_like.autoparallelize.chunks import Chunk
from wfl_like.autoparallelize.frame_items import FrameItem
from wfl_like.autoparallelize.resume import stored
from wfl_like.autoparallelize.resume.cache import RunCache
from wfl_like.autoparallelize.resume.journal import journal_path
from wfl_like.autoparallelize.workers.opcall import OpCall

CHUNK = 100
clock = time.perf_counter


def identity_op(atoms_list):
    return atoms_list


def texts(outputs, n_distinct=500):
    rng = np.random.default_rng(0)
    rendered = []
    for i in range(n_distinct):
        atoms = bulk("Cu", cubic=True).repeat((2, 2, 2))
        atoms.rattle(0.05, seed=i)
        atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal()), forces=rng.normal(size=(32, 3)),
                                           stress=rng.normal(size=6))
        rendered.append(outputs.render(atoms, (i,)))
    return rendered


def one_run(out, items, rendered):
    """Seconds of (keys + lookups, records) over all items, and the number found."""
    outputs = OutputSpec(out)
    cache = RunCache(journal_path(out), OpCall(op=identity_op, args=(), kwargs={}), skip_failed=False,
                     outputs=outputs)
    looking = recording = 0.0
    found_n = 0
    try:
        cache.start()
        for first in range(0, len(items), CHUNK):
            chunk_items = items[first:first + CHUNK]
            start = clock()
            # as the engine asks: all of a chunk's items in one query
            looked = cache.lookup_many(first, chunk_items, [None] * len(chunk_items))
            looking += clock() - start
            found = all(hit for _, hit, _ in looked)
            found_n += sum(hit for _, hit, _ in looked)
            chunk = Chunk(first, chunk_items, [item.location for item in chunk_items], [None] * len(chunk_items),
                          keys=[key for key, _, _ in looked], cached=[o for _, _, o in looked] if found else None)
            done = [] if found else [(first + i, rendered[(first + i) % len(rendered)])
                                     for i in range(len(chunk_items))]
            start = clock()
            cache.record(chunk, done, [])
            recording += clock() - start
        cache.finish(len(items), None, 0, None)
    finally:
        cache.close()
    return looking, recording, found_n


def journal_bytes(out):
    path = journal_path(out)
    return sum(os.path.getsize(p) for p in (path, Path(f"{path}-wal")) if p.exists())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50_000)
    n = parser.parse_args().frames
    items = [FrameItem("in.xyz", i, i + 1, (i,), hashlib.blake2b(i.to_bytes(8, "little"), digest_size=32).digest())
             for i in range(n)]
    with tempfile.TemporaryDirectory() as directory:
        sample = texts(OutputSpec(Path(directory) / "sample.xyz"))
        frame = sample[0].text.encode()
        start = clock()
        for _ in range(2000):
            hashlib.blake2b(frame, digest_size=32).digest()
        digest_us = (clock() - start) / 2000 * 1e6
        print(f"{n} frames of {len(frame)} bytes; hashing one frame's bytes: {digest_us:.1f} us")
        for label, compress_from in (("compressed", stored.COMPRESS_FROM), ("plain", 1 << 62)):
            saved, stored.COMPRESS_FROM = stored.COMPRESS_FROM, compress_from
            try:
                out = Path(directory) / f"{label}.xyz"
                looking, recording, _ = one_run(out, items, sample)
                size = journal_bytes(out)
                again_looking, again_recording, found = one_run(out, items, sample)
            finally:
                stored.COMPRESS_FROM = saved
            assert found == n
            print(f"{label:>10}: first run: keys+lookups {looking / n * 1e6:.1f} us/item, records "
                  f"{recording / n * 1e6:.1f} us/item, total {(looking + recording) / n * 1e6:.1f} us/item, "
                  f"journal {size / 1e6:.0f} MB; rerun (all found): lookups {again_looking / n * 1e6:.1f} us/item, "
                  f"records {again_recording / n * 1e6:.1f} us/item")


if __name__ == "__main__":
    main()
