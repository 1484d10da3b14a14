"""Attacks on the fast extended XYZ paths: odd structures, odd files, odd caches.

Each test here is an input that once broke the promise of :mod:`wfl_like.io.fastwrite`,
:mod:`wfl_like.io.fastread` or :mod:`wfl_like.io.frames` (the same bytes as ASE's writer,
the same structures as ASE's reader, or a clear error naming the file and frame), kept so
that it cannot break again.
"""

import io
import subprocess
import sys
import warnings

import ase.io
import numpy as np
import pytest
from ase.build import bulk

from wfl_like.errors import InputFileError
from wfl_like.io import fastread
from wfl_like.io.fastread import READER_ENV, read_frames
from wfl_like.io.fastwrite import extxyz_text
from wfl_like.io.frames import index_frames
from wfl_like.io.render import WRITER_ENV, render

HAVE_C = fastread._c_parser() is not None
MODES = [pytest.param("c", marks=pytest.mark.skipif(not HAVE_C, reason="extxyz (libextxyz) not installed")), "ase"]
TWO_CU = "Cu 0.0 0.0 0.0\nCu 1.0 1.0 1.0\n"


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


# --- the reader -----------------------------------------------------------------------


def read_as_ase(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ase.io.read(path, ":", format="extxyz", parallel=False)


def read_fast(path):
    index = index_frames(path, use_cache=False)
    return [atoms for i in range(index.n_frames)
            for atoms in read_frames(path, *index.byte_range(i), first_frame=i, first_line=index.line(i))]


def assert_read_as_ase(path):
    from test_io_fastread import assert_same_frames

    assert_same_frames(read_fast(path), read_as_ase(path))


def test_count_the_c_parser_reads_as_zero_does_not_crash_the_process(tmp_path):
    # Python's int() reads "0_2" as 2; libextxyz reads 0 and then crashed the process
    path = tmp_path / "underscore.xyz"
    path.write_text("0_2\na=1\n" + TWO_CU)
    script = ("import sys, test_io_attacks as t; "
              "frames = t.read_fast(sys.argv[1]); print(len(frames), len(frames[0]))")
    done = subprocess.run([sys.executable, "-c", script, str(path)],
                          capture_output=True, text=True, timeout=120, env=_env_with_tests_on_path(READER_ENV, "c"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1", "2"]
    assert_read_as_ase(path)


def _env_with_tests_on_path(name, value):
    import os
    from pathlib import Path

    env = dict(os.environ)
    env[name] = value
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("comment", ['a="" b=1', "a='' b=1 c=2", "a={} b=1", "a=[] b=1", 'b=1 a=""'])
def test_empty_delimited_value_reads_as_ase_reads_it(tmp_path, monkeypatch, mode, comment):
    # ASE's parser takes the pair after an empty "" as the value's text
    monkeypatch.setenv(READER_ENV, mode)
    path = tmp_path / "empty.xyz"
    path.write_text(f"2\n{comment}\n" + TWO_CU)
    assert_read_as_ase(path)


@pytest.mark.parametrize("header", ["\u0662", "\u0662 ", "2\u00a0", "\u20032"])
def test_count_in_other_digits_reads_as_ase_reads_it(tmp_path, header):
    # ASE's int(line) takes any Unicode digits and white space
    path = tmp_path / "digits.xyz"
    path.write_text(f"{header}\na=1\n" + TWO_CU, encoding="utf-8")
    assert_read_as_ase(path)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("z_column", ["Z:S:1", "Z:R:1"])
def test_z_column_is_given_to_atoms_as_ase_gives_it(tmp_path, monkeypatch, mode, z_column):
    # ASE passes a Z column as Atoms' first argument: strings in it are symbols, so '1'
    # is refused there (KeyError) while Atoms(numbers=['1']) would take it as hydrogen
    monkeypatch.setenv(READER_ENV, mode)
    path = tmp_path / "z.xyz"
    path.write_text(f"2\nProperties=species:S:1:pos:R:3:{z_column}\nHe 0 0 0 29\nHe 1 1 1 1\n"
                    f"2\nProperties=pos:R:3:{z_column}\n0 0 0 29\n1 1 1 1\n")
    try:
        want = read_as_ase(path)
    except KeyError:
        with pytest.raises(InputFileError, match="frame 0"):
            read_fast(path)
    else:
        from test_io_fastread import assert_same_frames

        assert_same_frames(read_fast(path), want)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("species_type", ["I", "R"])
def test_numbers_in_the_species_column_are_refused_with_the_frame(tmp_path, monkeypatch, mode, species_type):
    # ASE fails on them with an AttributeError, which escaped the C path's fallback
    monkeypatch.setenv(READER_ENV, mode)
    path = tmp_path / "species.xyz"
    path.write_text(f"2\nProperties=species:{species_type}:1:pos:R:3\n29 0 0 0\n1 1 1 1\n")
    with pytest.raises(AttributeError):
        read_as_ase(path)
    with pytest.raises(InputFileError, match=r"species\.xyz.*frame 0 \(line 1\)"):
        read_fast(path)


@pytest.mark.parametrize("comment, location", [('tags="" _ConfigSet_loc=" / 3"', None),
                                               ('_ConfigSet_loc="" a=" / 3"', "refused"),
                                               ('_ConfigSet_loc=""', ()),
                                               ('a=1 _ConfigSet_loc=" / 3"', (3,))])
def test_stored_location_after_an_empty_value_is_what_ase_reads(tmp_path, comment, location):
    # after an empty "" ASE's parser takes the next pair as the text of the empty one
    path = tmp_path / "loc.xyz"
    path.write_text(f"2\n{comment}\n" + TWO_CU)
    if location == "refused":
        with pytest.raises(InputFileError, match=r"loc\.xyz.*frame 0 \(line 2\).*_ConfigSet_loc"):
            index_frames(path, use_cache=False)
    else:
        assert index_frames(path, use_cache=False).location(0) == location


# --- the frame index ----------------------------------------------------------------------


def test_sparse_file_of_zeros_is_refused_quickly_and_clearly(tmp_path):
    # one "line" of 300 MB of zero bytes was copied (and decoded twice) to say it is no count;
    # at 2 GB the copies ran out of memory and the map's BufferError hid the error
    path = tmp_path / "sparse.xyz"
    with open(path, "wb") as handle:
        handle.truncate(300 * 2**20)
    with pytest.raises(InputFileError, match=r"sparse\.xyz.*frame 0 \(line 1\): a line of 314572800 bytes"):
        index_frames(path, use_cache=False)


def test_long_blank_last_line_ends_the_file(tmp_path):
    path = tmp_path / "blank_tail.xyz"
    path.write_text("2\na=1\n" + TWO_CU + " " * 100_000 + "\n")
    assert index_frames(path, use_cache=False).n_frames == 1
    assert_read_as_ase(path)
    path.write_text("2\na=1\n" + TWO_CU + " " * 100_000 + "\n2\na=1\n" + TWO_CU)
    with pytest.raises(InputFileError, match=r"frame 1 \(line 5\): a blank line"):
        index_frames(path, use_cache=False)


@pytest.mark.parametrize("mode", MODES)
def test_frames_with_the_same_json_values_share_no_object(tmp_path, monkeypatch, mode):
    # values converted once for all frames with the same text were given to every frame:
    # a dict, or the inner lists of a nested list, changed in one frame changed in all
    monkeypatch.setenv(READER_ENV, mode)
    path = tmp_path / "json.xyz"
    frame = "2\nd='_JSON {\"a\": [1]}' n='_JSON [[1, \"x\"]]' b=\"T F\" v=\"1 2\"\n" + TWO_CU
    path.write_text(frame * 3)
    first, second, third = read_frames(path, 0, path.stat().st_size)
    first.info["d"]["a"].append(2)
    first.info["n"][0].append(3)
    first.info["b"].append(True)
    first.info["v"][0] = 5
    assert second.info["d"] == third.info["d"] == {"a": [1]}
    assert second.info["n"] == [[1, "x"]]
    assert second.info["b"] == [True, False]
    assert second.info["v"].tolist() == [1, 2]
    assert_read_as_ase(path)


@pytest.mark.parametrize("mode", MODES)
def test_bytes_with_a_lone_carriage_return_are_refused_by_the_reader_too(monkeypatch, mode):
    # the C path read "a=1\rb=2" as one comment line where ASE ends the line at the \r
    monkeypatch.setenv(READER_ENV, mode)
    with pytest.raises(InputFileError, match=r"'mem\.xyz'.*carriage return .* at byte 5"):
        fastread.parse_frames(b"1\na=1\rb=2\nCu 0 0 0\n", source="mem.xyz")
    assert len(fastread.parse_frames(b"1\r\na=1\r\nCu 0 0 0\r\n", source="mem.xyz")) == 1


def test_selection_with_a_negative_step_and_a_stop_follows_ase_iread(tmp_path):
    # ASE's reader finds frames only up to the stop: "5:1:-1" of 7 frames selects none
    path = tmp_path / "seven.xyz"
    path.write_text("".join(f"1\ni={i}\nH 0 0 0\n" for i in range(7)))
    index = index_frames(path, use_cache=False)
    for selection in ["5:1:-1", "6:0:-2", "::-1", "-1:-8:-1", "3:", "1:5:2", slice(4, 2, -1), slice(9, 3, -1), 8, "-2"]:
        want = [atoms.info["i"] for atoms in ase.io.iread(path, index=selection, format="extxyz", parallel=False)]
        assert index.select(selection).tolist() == want, selection


@pytest.mark.parametrize("width", [1000, 2**31, 2**32 + 1])
def test_properties_wider_than_the_atom_lines_are_refused_at_once(tmp_path, width):
    # ASE builds a record type of that many fields before it finds the line short (hours
    # at 2**31); libextxyz's 32-bit count wraps (2**32 + 1 + 4 values read as 5)
    path = tmp_path / "wide.xyz"
    path.write_text(f"2\nProperties=species:S:1:pos:R:3:x:R:{width}\nCu 0 0 0 1\nCu 1 1 1 1\n")
    with pytest.raises(InputFileError, match=rf"wide\.xyz.*frame 0 \(line 1\).*declare {width + 4} values per atom"):
        read_fast(path)


def test_wide_properties_that_the_lines_hold_still_read_as_ase(tmp_path):
    path = tmp_path / "wide_ok.xyz"
    path.write_text("2\nProperties=species:S:1:pos:R:3:x:R:300\n" + "".join(
        f"Cu {k} 0 0 " + " ".join(["1"] * 300) + "\n" for k in range(2)))
    assert_read_as_ase(path)
