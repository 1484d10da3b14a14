"""The frame index: byte offsets against a line-by-line reference, the cache, errors, selection."""

import os

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator

import ase.io
from wfl_like.errors import InputFileError
from wfl_like.io import frames
from wfl_like.io.frames import FrameIndex, cache_dir, index_frames


@pytest.fixture(autouse=True)
def own_cache_dir(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    monkeypatch.setenv("WFL_LIKE_CACHE_DIR", str(directory))
    return directory


def reference_offsets(path):
    """Frame start offsets found the slow way: line by line, by the atom counts."""
    with open(path, "rb") as handle:
        lines = handle.readlines()
    starts, i = [], 0
    positions = np.cumsum([0] + [len(line) for line in lines])
    while i < len(lines) and lines[i].strip():
        starts.append(int(positions[i]))
        i += int(lines[i]) + 2
        while i < len(lines) and lines[i].lstrip().startswith(b"VEC"):
            i += 1
    if starts:
        starts.append(int(positions[-1]))
    return starts or [0]


def reference_lines(path):
    """1-based header line numbers, found as reference_offsets finds the frames."""
    with open(path, "rb") as handle:
        lines = handle.readlines()
    numbers, i = [], 0
    while i < len(lines) and lines[i].strip():
        numbers.append(i + 1)
        i += int(lines[i]) + 2
        while i < len(lines) and lines[i].lstrip().startswith(b"VEC"):
            i += 1
    return numbers


def varied_frames():
    rng = np.random.default_rng(0)
    out = []
    for n in (1, 5, 32, 2, 17):
        atoms = Atoms(f"Cu{n}", positions=rng.normal(size=(n, 3)), cell=np.eye(3) * 9, pbc=True)
        atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal()), forces=rng.normal(size=(n, 3)))
        out.append(atoms)
    out.append(molecule("CH3CH2OH"))
    out.append(bulk("Si") * (3, 1, 1))
    out[-1].info["_ConfigSet_loc"] = " / 4 / 1"
    return out


TEXT_FILES = {
    "windows": "1\r\nx=1\r\nH 0 0 0\r\n2\r\nx=2\r\nH 0 0 0\r\nH 1 1 1\r\n",
    "no_final_newline": "1\nx=1\nH 0 0 0\n1\nx=2\nH 1 1 1",
    "trailing_blank_lines": "1\nx=1\nH 0 0 0\n\n  \n\n",
    "zero_atom_frames": "0\nx=1\n1\nx=2\nH 0 0 0\n0\nx=3\n",
    "vec_lines": "1\ncomment\nH 0 0 0\nVEC1 2 0 0\nVEC2 0 2 0\n1\ncomment\nH 0 0 0\n",
    "padded_counts": "  2  \nx=1\nH 0 0 0\nH 0 0 1\n+1\nx=2\nH 0 0 0\n",
    "long_comment": "1\n" + "k=" + "v" * 100_000 + "\nH 0 0 0\n",
    # runs of equal headers, broken by VEC lines, by the same count written otherwise, by zero atoms
    "runs": ("2\nx=1\nH 0 0 0\nH 0 0 1\n" * 40 + "2\nx=1\nH 0 0 0\nH 0 0 1\nVEC1 1 0 0\n"
             + "2\nx=1\nH 0 0 0\nH 0 0 1\n" * 20 + " 2\nx=1\nH 0 0 0\nH 0 0 1\n" * 3 + "0\n\n" * 30
             + "2\nx=1\nH 0 0 0\nH 0 0 1\n" * 5 + "2\r\nx=1\r\nH 0 0 0\r\nH 0 0 1\r\n" * 5
             + "2\nx=1\nH 0 0 0\nH 0 0 1"),
    "runs_with_locations": "".join(f'1\n_ConfigSet_loc=" / {i}"\nH 0 0 0\n' for i in range(50)),
}


def _varied_files(tmp_path):
    paths = []
    written = tmp_path / "written.xyz"
    ase.io.write(written, varied_frames(), format="extxyz")
    paths.append(written)
    for name, text in TEXT_FILES.items():
        path = tmp_path / f"{name}.xyz"
        path.write_bytes(text.encode())
        paths.append(path)
    return paths


@pytest.mark.parametrize("block_bytes", [None, 1, 7, 64])
def test_offsets_equal_the_line_by_line_reference(tmp_path, monkeypatch, block_bytes):
    if block_bytes is not None:
        # tiny blocks put block edges inside every kind of line
        monkeypatch.setattr(frames, "BLOCK_BYTES", block_bytes)
    for path in _varied_files(tmp_path):
        index = index_frames(path, use_cache=False)
        assert index.offsets.dtype == np.int64
        assert index.offsets.tolist() == reference_offsets(path), path.name
        assert index.n_frames == len(ase.io.read(path, index=":", format="extxyz", parallel=False)), path.name
        assert index.offsets[-1] == path.stat().st_size
        assert index.lines.tolist() == reference_lines(path), path.name
        if path.name == "runs_with_locations.xyz":
            assert [index.location(i) for i in range(50)] == [(i,) for i in range(50)]


def test_each_range_holds_its_frame(tmp_path):
    path = tmp_path / "written.xyz"
    structures = varied_frames()
    ase.io.write(path, structures, format="extxyz")
    index = index_frames(path)
    data = path.read_bytes()
    from io import StringIO
    for i, atoms in enumerate(structures):
        start, end = index.byte_range(i)
        alone = ase.io.read(StringIO(data[start:end].decode()), format="extxyz", parallel=False)
        assert alone.get_chemical_symbols() == atoms.get_chemical_symbols()
        assert np.allclose(alone.positions, atoms.positions)


def test_empty_and_blank_files_have_no_frames(tmp_path):
    empty = tmp_path / "empty.xyz"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.xyz"
    blank.write_bytes(b"\n \n\n")
    for path in (empty, blank):
        index = index_frames(path)
        assert index.n_frames == 0 and index.offsets.tolist() == [0]
        assert index.select(":").tolist() == []
        assert ase.io.read(path, index=":", format="extxyz", parallel=False) == []


def test_locations_stored_in_comment_lines(tmp_path):
    path = tmp_path / "locs.xyz"
    path.write_text('1\n_ConfigSet_loc=" / 2 / 0" x=1\nH 0 0 0\n'
                    "1\nx=1\nH 0 0 0\n"
                    '1\nenergy=1 _ConfigSet_loc = " / 7"\nH 0 0 0\n'
                    "1\n_ConfigSet_loc=\"\"\nH 0 0 0\n"
                    '1\nnot_ConfigSet_loc=" / 9" y=" _ConfigSet_loc=1"\nH 0 0 0\n')
    for use_cache in (True, True, False):  # written, read back from the cache, scanned without it
        index = index_frames(path, use_cache=use_cache)
        assert [index.location(i) for i in range(index.n_frames)] == [(2, 0), None, (7,), (), None]
        assert index.has_locations
    with pytest.raises(IndexError):
        index.location(5)


def test_malformed_location_names_frame_and_line(tmp_path):
    path = tmp_path / "badloc.xyz"
    path.write_text('1\nx=1\nH 0 0 0\n1\n_ConfigSet_loc=" / two"\nH 0 0 0\n')
    with pytest.raises(InputFileError, match=r"badloc\.xyz.*frame 1 \(line 5\).*' / 2 / 0'"):
        index_frames(path)


@pytest.mark.parametrize("text, frame, line, what", [
    ("1\nx=1\nH 0 0 0\nx\nx=1\nH 0 0 0\n", 1, 4, "expected the number of atoms, found 'x'"),
    ("1\nx=1\nH 0 0 0\n3 atoms\nx=1\n", 1, 4, "expected the number of atoms"),
    ("1\nx=1\nH 0 0 0\n-1\nx=1\n", 1, 4, "expected the number of atoms, found '-1'"),
    ("1\nx=1\nH 0 0 0\n1\nx=1\nH 0 0 0\n3\nx=1\nH 0 0 0\n", 2, 7, "the file ends inside this frame of 3 atoms"),
    ("2\n", 0, 1, "the file ends inside this frame of 2 atoms"),
    ("1\nx=1\nH 0 0 0\n\n1\nx=1\nH 0 0 0\n", 1, 4, "a blank line where the number of atoms was expected"),
])
def test_bad_headers_and_truncation_name_frame_and_line(tmp_path, text, frame, line, what):
    path = tmp_path / "bad.xyz"
    path.write_text(text)
    with pytest.raises(InputFileError, match=rf"bad\.xyz.*frame {frame} \(line {line}\): {what}"):
        index_frames(path)


def test_lone_carriage_returns_are_refused(tmp_path):
    path = tmp_path / "mac.xyz"
    path.write_bytes(b"1\rx=1\rH 0 0 0\r")
    with pytest.raises(InputFileError, match=r"mac\.xyz.*carriage return.*byte 1"):
        index_frames(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputFileError, match=r"missing\.xyz.*does not exist"):
        index_frames(tmp_path / "missing.xyz")
    with pytest.raises(InputFileError, match="not a regular file"):
        index_frames(tmp_path)


INDICES = [":", "::2", "1:10", "-3:", "::-1", "1::3", "5:2", 0, 2, -1, "4", "-2", slice(1, None, 3),
           slice(None, -2), np.int64(3), 7, -8, "9", -7]


def test_selection_equals_ase_index(tmp_path):
    path = tmp_path / "seven.xyz"
    structures = [Atoms("H", positions=[[0, 0, i]]) for i in range(7)]
    ase.io.write(path, structures, format="extxyz")
    index = index_frames(path)
    for selector in INDICES:
        got = index.select(selector)
        # ase.io.iread is what ConfigSet reads files with
        read = list(ase.io.iread(path, index=selector, format="extxyz", parallel=False))
        assert got.tolist() == [int(round(a.positions[0, 2])) for a in read], selector
    for selector in ("first", 1.5, None, "1:x"):
        with pytest.raises(TypeError, match="seven.xyz"):
            index.select(selector)


# --- the cache ------------------------------------------------------------------------


def _cache_files(directory):
    return sorted((directory / "frame-index").glob("*.npz"))


def _write_file(path, n_frames):
    ase.io.write(path, [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7 + i / 10]]) for i in range(n_frames)],
                 format="extxyz")


def _plant_index(cache_file, offsets):
    """Replace a cache file's offsets by other valid ones, keeping what identifies the file."""
    with np.load(cache_file) as stored:
        arrays = {k: stored[k] for k in stored.files}
    arrays["offsets"] = np.asarray(offsets, np.int64)
    arrays["lines"] = np.arange(1, len(offsets), dtype=np.int64)
    with open(cache_file, "wb") as handle:
        np.savez(handle, **arrays)


def test_a_rerun_reuses_the_kept_index(tmp_path, own_cache_dir):
    path = tmp_path / "h2.xyz"
    _write_file(path, 4)
    first = index_frames(path)
    (cache_file,) = _cache_files(own_cache_dir)
    # a planted index, valid but different, is what a rerun returns: the file is not scanned again
    planted = [0, int(first.offsets[2]), int(first.offsets[4])]
    _plant_index(cache_file, planted)
    assert index_frames(path).offsets.tolist() == planted
    assert index_frames(path, use_cache=False).offsets.tolist() == first.offsets.tolist()


@pytest.mark.parametrize("change", ["touch", "append", "rewrite_same_size"])
def test_a_changed_file_is_scanned_again(tmp_path, own_cache_dir, change):
    path = tmp_path / "h2.xyz"
    _write_file(path, 4)
    first = index_frames(path)
    (cache_file,) = _cache_files(own_cache_dir)
    _plant_index(cache_file, [0, int(first.offsets[4])])  # would show if it were trusted
    stat = path.stat()
    if change == "touch":
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    elif change == "append":
        with open(path, "a") as handle:
            handle.write("1\nx=1\nH 0 0 0\n")
    else:
        # the same size and modification time, other frames: only the change time (and maybe inode) tell
        text = path.read_text()
        lines = text.splitlines(keepends=True)
        swapped = "".join(lines[4:8] + lines[:4] + lines[8:])
        assert len(swapped) == len(text)
        path.write_text(swapped)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = index_frames(path)
    assert again.offsets.tolist() == reference_offsets(path)
    assert again.n_frames == (5 if change == "append" else 4)
    # the entry of the old state of the file is replaced, not kept beside the new one
    assert len(_cache_files(own_cache_dir)) == 1


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_dtype", "not_increasing", "wrong_size",
                                    "wrong_digest", "bad_locations", "bad_lines", "no_lines"])
def test_a_damaged_or_foreign_cache_file_is_ignored_and_replaced(tmp_path, own_cache_dir, damage):
    path = tmp_path / "h2.xyz"
    _write_file(path, 3)
    first = index_frames(path)
    (cache_file,) = _cache_files(own_cache_dir)
    with np.load(cache_file) as stored:
        arrays = {k: stored[k] for k in stored.files}
    if damage == "garbage":
        cache_file.write_bytes(b"not an npz file at all")
    elif damage == "truncated":
        cache_file.write_bytes(cache_file.read_bytes()[:100])
    else:
        if damage == "wrong_dtype":
            arrays["offsets"] = arrays["offsets"].astype(np.float64)
        elif damage == "not_increasing":
            arrays["offsets"] = np.array([0, 40, 20, arrays["offsets"][-1]], np.int64)
        elif damage == "wrong_size":
            arrays["offsets"] = arrays["offsets"] + np.array([0, 0, 0, 5])
        elif damage == "wrong_digest":
            arrays["digest"] = np.array("0" * 32)
        elif damage == "bad_lines":
            arrays["lines"] = arrays["lines"][::-1].copy()
        elif damage == "no_lines":
            del arrays["lines"]
        else:
            arrays.update(loc_frames=np.array([7], np.int64), loc_starts=np.array([0, 1], np.int64),
                          loc_values=np.array([1], np.int64))
        with open(cache_file, "wb") as handle:
            np.savez(handle, **arrays)
    again = index_frames(path)
    assert again.offsets.tolist() == first.offsets.tolist()
    assert again.location(0) is None
    # replaced by a good one, which the next run trusts
    (replaced,) = _cache_files(own_cache_dir)
    with np.load(replaced) as stored:
        assert stored["offsets"].tolist() == first.offsets.tolist()


def test_an_unwritable_cache_dir_only_means_no_cache(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    monkeypatch.setenv("WFL_LIKE_CACHE_DIR", str(blocker / "cache"))
    path = tmp_path / "h2.xyz"
    _write_file(path, 2)
    with caplog.at_level("DEBUG", logger="wfl_like.io.frames"):
        index = index_frames(path)
    assert index.n_frames == 2
    assert any("not kept" in record.getMessage() for record in caplog.records)
    assert not (blocker.parent / "cache").exists()


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("WFL_LIKE_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("WFL_LIKE_CACHE_DIR")
    assert cache_dir() == tmp_path / "xdg" / "wfl_like"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "wfl_like"


def test_frame_index_by_hand():
    index = FrameIndex("x.xyz", [0, 10, 25], loc_frames=[1], loc_starts=[0, 2], loc_values=[3, 4], lines=[1, 4])
    assert index.line(1) == 4
    assert (index.n_frames, len(index), index.byte_range(1)) == (2, 2, (10, 25))
    assert (index.location(0), index.location(1)) == (None, (3, 4))
    assert repr(index) == "FrameIndex('x.xyz', n_frames=2)"


def test_locations_equal_what_ase_parses(tmp_path):
    from wfl_like.locations import location_of

    comments = ['_ConfigSet_loc=" / 1"', "_ConfigSet_loc=' / 2'", "_ConfigSet_loc={ / 3}",
                'a="x _ConfigSet_loc=5" _ConfigSet_loc=" / 4"', '_ConfigSet_loc=" / 5" _ConfigSet_loc=" / 6"',
                'b=[1,2] _ConfigSet_loc=" / 7"', '_ConfigSet_loc=\t" / 8"', 'x_ConfigSet_loc=" / 9"',
                'c="a \\" b" _ConfigSet_loc=" / 10"', '_ConfigSet_loc=" / 11 / 0" d=1', "e=1"]
    path = tmp_path / "locs.xyz"
    path.write_text("".join(f"1\n{c}\nH 0 0 0\n" for c in comments))
    want = [location_of(a) for a in ase.io.read(path, index=":", format="extxyz", parallel=False)]
    index = index_frames(path)
    assert [index.location(i) for i in range(index.n_frames)] == want
    assert want[:2] == [(1,), (2,)] and want[4] == (6,) and want[7] is None


def test_location_value_running_on_is_refused_as_ase_reads_it(tmp_path):
    path = tmp_path / "runon.xyz"
    path.write_text('1\n_ConfigSet_loc=" / 3"x\nH 0 0 0\n')  # ASE reads ' / 3x'
    with pytest.raises(InputFileError, match=r"runon\.xyz.*frame 0 \(line 2\).* / 3x"):
        index_frames(path)
