"""Tests of wfl_like.configset: ConfigSet and OutputSpec, with real files in tmp_path."""

import re

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from numpy.testing import assert_allclose, assert_array_equal

from wfl_like import io
from wfl_like.configset import ConfigSet, OutputSpec
from wfl_like.errors import InputFileError
from helpers import listing

LOC = "_ConfigSet_loc"


# ----------------------------------------------------------------------------- helpers

def h2(label, d=0.7):
    """A small labelled structure; ``d`` makes structures distinguishable by position too."""
    at = Atoms("H2", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, d]])
    at.info["label"] = label
    return at


def cu(label, a=3.6):
    at = bulk("Cu", a=a)
    at.info["label"] = label
    return at


def write_xyz(path, labels):
    path.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(path, [h2(lab, 0.7 + 0.01 * i) for i, lab in enumerate(labels)], format="extxyz")
    return path


def labels(configs):
    return [at.info["label"] for at in configs]


def locs(configs):
    return [at.info[LOC] for at in configs]


def tree(item):
    """Nested list of labels following groups(): Atoms -> label, ConfigSet -> list."""
    if isinstance(item, Atoms):
        return item.info["label"]
    return [tree(sub) for sub in item.groups()]


def iter_with_cur_loc(cs):
    """(label, info loc, cs.cur_loc) while iterating."""
    return [(at.info["label"], at.info[LOC], cs.cur_loc) for at in cs]


def nested_mem():
    """[[a, b], [c], [[d, e], f]]"""
    return [[h2("a"), h2("b")], [h2("c")], [[h2("d"), h2("e")], h2("f")]]


NESTED_LOCS = [" / 0 / 0", " / 0 / 1", " / 1 / 0", " / 2 / 0 / 0", " / 2 / 0 / 1", " / 2 / 1"]
NESTED_TREE = [["a", "b"], ["c"], [["d", "e"], "f"]]


def rich_structures():
    """Structures with cell, pbc, info of several types and per-atom arrays."""
    out = []
    for i in range(3):
        at = bulk("Cu", "fcc", a=3.6 + 0.1 * i, cubic=(i == 1))
        at.rattle(0.05, seed=i)
        at.pbc = [True, True, i != 2]
        at.info.update({"label": f"r{i}", "energy_like": -1.5 * i, "step": i, "tag_s": f"s{i}",
                        "vec": np.array([1.0, 2.0, 3.0 + i]), "flag": bool(i % 2)})
        at.arrays["q_custom"] = np.linspace(-0.5, 0.5, len(at)) + i
        at.arrays["vecs"] = np.arange(3 * len(at), dtype=float).reshape(len(at), 3) * (i + 1)
        out.append(at)
    return out


def assert_same_structure(a, b):
    assert_array_equal(a.numbers, b.numbers)
    assert_allclose(a.positions, b.positions, atol=1e-8)
    assert_allclose(a.cell.array, b.cell.array, atol=1e-8)
    assert_array_equal(a.pbc, b.pbc)
    info_a = {k: v for k, v in a.info.items() if k != LOC}
    info_b = {k: v for k, v in b.info.items() if k != LOC}
    assert set(info_a) == set(info_b)
    for key in info_a:
        if isinstance(info_a[key], (str, bool, np.bool_)):
            assert info_a[key] == info_b[key], key
        else:
            assert_allclose(info_a[key], info_b[key], atol=1e-10, err_msg=key)
    assert set(a.arrays) == set(b.arrays)
    for key in a.arrays:
        assert_allclose(a.arrays[key], b.arrays[key], atol=1e-8, err_msg=key)


# ----------------------------------------------------------------------------- ConfigSet in memory

def test_one_atoms():
    at = h2("only")
    cs = ConfigSet(at)
    assert cs.cur_loc is None
    assert iter_with_cur_loc(cs) == [("only", " / 0", " / 0")]
    assert cs.cur_loc is None  # reset at the end of the iteration
    assert cs.one_file() is False
    groups = list(cs.groups())
    assert len(groups) == 1 and groups[0] is at
    assert LOC not in groups[0].info


def test_flat_list_order_locations_and_cur_loc():
    cs = ConfigSet([h2("a"), h2("b"), h2("c")])
    assert iter_with_cur_loc(cs) == [("a", " / 0", " / 0"), ("b", " / 1", " / 1"), ("c", " / 2", " / 2")]
    # iterating again gives the same again
    assert labels(cs) == ["a", "b", "c"]
    assert locs(cs) == [" / 0", " / 1", " / 2"]


def test_nested_two_levels():
    cs = ConfigSet([[h2("a"), h2("b")], [h2("c")], [h2("d"), h2("e"), h2("f")]])
    got = iter_with_cur_loc(cs)
    assert [g[0] for g in got] == ["a", "b", "c", "d", "e", "f"]
    assert [g[1] for g in got] == [" / 0 / 0", " / 0 / 1", " / 1 / 0", " / 2 / 0", " / 2 / 1", " / 2 / 2"]
    assert [g[2] for g in got] == [g[1] for g in got]


def test_nested_three_levels_and_mixed_depths():
    cs = ConfigSet([[[h2("a"), h2("b")], [h2("c")]], [[h2("d")]]])
    assert labels(cs) == ["a", "b", "c", "d"]
    assert locs(cs) == [" / 0 / 0 / 0", " / 0 / 0 / 1", " / 0 / 1 / 0", " / 1 / 0 / 0"]

    cs = ConfigSet(nested_mem())
    assert labels(cs) == ["a", "b", "c", "d", "e", "f"]
    assert locs(cs) == NESTED_LOCS


def test_existing_loc_in_info_is_replaced():
    at = h2("a")
    at.info[LOC] = " / 7 / 7"
    assert locs(ConfigSet([h2("z"), at])) == [" / 0", " / 1"]


def test_tuple_and_generator_inputs():
    assert labels(ConfigSet((h2("a"), h2("b")))) == ["a", "b"]
    assert labels(ConfigSet(h2(x) for x in "xyz")) == ["x", "y", "z"]


@pytest.mark.parametrize("empty", [None, [], ()])
def test_empty(empty):
    cs = ConfigSet(empty)
    assert list(cs) == []
    assert list(cs.groups()) == []
    assert cs.one_file() is False
    assert cs.files() == []
    # an empty set may be combined with anything
    assert labels(cs + ConfigSet([h2("a")])) == ["a"]


def test_outputspec_is_not_a_configset_input():
    with pytest.raises(TypeError, match="to_ConfigSet"):
        ConfigSet(OutputSpec())


def test_bad_item_type():
    with pytest.raises(TypeError):
        ConfigSet(3)


# ----------------------------------------------------------------------------- ConfigSet from files

def test_one_file(tmp_path):
    path = write_xyz(tmp_path / "in.xyz", ["a", "b", "c"])
    for arg in (path, str(path)):
        cs = ConfigSet(arg)
        assert iter_with_cur_loc(cs) == [("a", " / 0", " / 0"), ("b", " / 1", " / 1"), ("c", " / 2", " / 2")]
        assert cs.cur_loc is None
        assert cs.one_file() == path
        assert cs.files() == [path]
    # groups of a file without stored locations: one Atoms per structure
    groups = list(ConfigSet(path).groups())
    assert all(isinstance(g, Atoms) for g in groups)
    assert labels(groups) == ["a", "b", "c"]
    assert all(LOC not in g.info for g in groups)


def test_relative_path_uses_cwd(tmp_path, monkeypatch):
    write_xyz(tmp_path / "in.xyz", ["a", "b"])
    monkeypatch.chdir(tmp_path)
    assert labels(ConfigSet("in.xyz")) == ["a", "b"]


def test_glob_sorted_and_file_index_first_level(tmp_path):
    # created in non-sorted order, with different numbers of structures
    write_xyz(tmp_path / "c.xyz", ["c0"])
    write_xyz(tmp_path / "a.xyz", ["a0", "a1"])
    write_xyz(tmp_path / "b.xyz", ["b0", "b1", "b2"])
    (tmp_path / "not_matching.txt").write_text("x")
    cs = ConfigSet(str(tmp_path / "*.xyz"))
    assert labels(cs) == ["a0", "a1", "b0", "b1", "b2", "c0"]
    assert locs(cs) == [" / 0 / 0", " / 0 / 1", " / 1 / 0", " / 1 / 1", " / 1 / 2", " / 2 / 0"]
    assert cs.files() == [tmp_path / "a.xyz", tmp_path / "b.xyz", tmp_path / "c.xyz"]
    assert cs.one_file() is False


def test_glob_matching_one_file_is_still_a_list_of_files(tmp_path):
    write_xyz(tmp_path / "a.xyz", ["a0", "a1"])
    cs = ConfigSet(str(tmp_path / "a*.xyz"))
    # a glob gives one top-level group per file, even for a single match (as in wfl)
    assert locs(cs) == [" / 0 / 0", " / 0 / 1"]
    assert cs.one_file() == tmp_path / "a.xyz"
    groups = list(cs.groups())
    assert len(groups) == 1 and isinstance(groups[0], ConfigSet)
    assert labels(groups[0]) == ["a0", "a1"]


def test_list_of_files_and_globs_keeps_given_order(tmp_path):
    write_xyz(tmp_path / "z.xyz", ["z0"])
    write_xyz(tmp_path / "sub" / "b.xyz", ["b0"])
    write_xyz(tmp_path / "sub" / "a.xyz", ["a0", "a1"])
    write_xyz(tmp_path / "m.xyz", ["m0"])
    cs = ConfigSet([tmp_path / "z.xyz", str(tmp_path / "sub" / "*.xyz"), str(tmp_path / "m.xyz")])
    assert labels(cs) == ["z0", "a0", "a1", "b0", "m0"]
    assert locs(cs) == [" / 0 / 0", " / 1 / 0", " / 1 / 1", " / 2 / 0", " / 3 / 0"]
    assert cs.files() == [tmp_path / "z.xyz", tmp_path / "sub" / "a.xyz", tmp_path / "sub" / "b.xyz",
                          tmp_path / "m.xyz"]


def test_list_of_one_file_is_one_group_per_file(tmp_path):
    path = write_xyz(tmp_path / "in.xyz", ["a", "b"])
    cs = ConfigSet([path])
    assert locs(cs) == [" / 0 / 0", " / 0 / 1"]
    assert cs.one_file() == path


def test_recursive_glob(tmp_path):
    write_xyz(tmp_path / "d1" / "x.xyz", ["x"])
    write_xyz(tmp_path / "d1" / "d2" / "y.xyz", ["y"])
    cs = ConfigSet("**/*.xyz", file_root=tmp_path)
    assert sorted(labels(cs)) == ["x", "y"]
    assert len(cs.files()) == 2


def test_file_root(tmp_path):
    write_xyz(tmp_path / "data" / "a.xyz", ["a0", "a1"])
    write_xyz(tmp_path / "data" / "b.xyz", ["b0"])
    root = tmp_path / "data"
    cs = ConfigSet("a.xyz", file_root=root)
    assert labels(cs) == ["a0", "a1"]
    assert cs.one_file() == root / "a.xyz"
    cs = ConfigSet(["b.xyz", "a.xyz"], file_root=str(root))
    assert labels(cs) == ["b0", "a0", "a1"]
    assert locs(cs) == [" / 0 / 0", " / 1 / 0", " / 1 / 1"]
    assert labels(ConfigSet("*.xyz", file_root=root)) == ["a0", "a1", "b0"]


def test_names_with_glob_characters(tmp_path):
    # an existing file is read as named, even when [ ] would make its name a glob
    path = write_xyz(tmp_path / "run[1]" / "a[0].xyz", ["a", "b"])
    cs = ConfigSet(path)
    assert labels(cs) == ["a", "b"]
    assert locs(cs) == [" / 0", " / 1"]  # one file, not a list of files
    assert cs.one_file() == path
    assert labels(ConfigSet("a[0].xyz", file_root=tmp_path / "run[1]")) == ["a", "b"]
    # a file_root is a directory name, never a pattern: globs below it still work
    write_xyz(tmp_path / "run[1]" / "b.xyz", ["c"])
    cs = ConfigSet("*.xyz", file_root=tmp_path / "run[1]")
    assert cs.files() == [tmp_path / "run[1]" / "a[0].xyz", tmp_path / "run[1]" / "b.xyz"]
    assert labels(cs) == ["a", "b", "c"]


def test_file_root_with_absolute_path_raises(tmp_path):
    path = write_xyz(tmp_path / "a.xyz", ["a"])
    with pytest.raises(ValueError, match="absolute"):
        ConfigSet(path, file_root=tmp_path)
    with pytest.raises(ValueError, match="absolute"):
        ConfigSet([str(path)], file_root=tmp_path)


def test_missing_file_raises_naming_it(tmp_path):
    missing = tmp_path / "nope.xyz"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        ConfigSet(missing)
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        ConfigSet("nope.xyz", file_root=tmp_path)
    present = write_xyz(tmp_path / "a.xyz", ["a"])
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        ConfigSet([present, missing])


def test_glob_matching_nothing_raises_naming_it(tmp_path):
    pattern = str(tmp_path / "*.nothing")
    with pytest.raises(FileNotFoundError, match=re.escape(pattern)):
        ConfigSet(pattern)
    write_xyz(tmp_path / "a.xyz", ["a"])
    with pytest.raises(FileNotFoundError, match=re.escape(pattern)):
        ConfigSet([str(tmp_path / "a.xyz"), pattern])


def test_read_kwargs_index(tmp_path):
    path = write_xyz(tmp_path / "in.xyz", ["a", "b", "c", "d", "e"])
    cs = ConfigSet(path, read_kwargs={"index": "::2"})
    assert labels(cs) == ["a", "c", "e"]
    assert locs(cs) == [" / 0", " / 1", " / 2"]
    assert labels(ConfigSet(path, read_kwargs={"index": "1:3"})) == ["b", "c"]
    # applies to every file of a list, and to groups
    path2 = write_xyz(tmp_path / "in2.xyz", ["p", "q", "r"])
    cs = ConfigSet([path, path2], read_kwargs={"index": "::2"})
    assert labels(cs) == ["a", "c", "e", "p", "r"]
    assert [labels(g) for g in cs.groups()] == [["a", "c", "e"], ["p", "r"]]


def test_file_based_configset_rereads_the_file(tmp_path):
    path = write_xyz(tmp_path / "in.xyz", ["a", "b"])
    cs = ConfigSet(path)
    assert labels(cs) == ["a", "b"]
    write_xyz(path, ["c"])
    assert labels(cs) == ["c"]


# ----------------------------------------------------------------------------- combining ConfigSets

def test_configset_from_configset(tmp_path):
    mem = ConfigSet(nested_mem())
    again = ConfigSet(mem)
    assert labels(again) == ["a", "b", "c", "d", "e", "f"]
    assert locs(again) == NESTED_LOCS
    assert tree(again) == NESTED_TREE

    path = write_xyz(tmp_path / "in.xyz", ["a", "b"])
    again = ConfigSet(ConfigSet(path))
    assert again.one_file() == path
    assert locs(again) == [" / 0", " / 1"]


def test_list_of_file_configsets_concatenates_files(tmp_path):
    p1 = write_xyz(tmp_path / "1.xyz", ["a0", "a1"])
    p2 = write_xyz(tmp_path / "2.xyz", ["b0"])
    p3 = write_xyz(tmp_path / "3.xyz", ["c0"])
    cs = ConfigSet([ConfigSet(p1), ConfigSet([p2, p3])])
    assert cs.files() == [p1, p2, p3]
    assert labels(cs) == ["a0", "a1", "b0", "c0"]
    assert locs(cs) == [" / 0 / 0", " / 0 / 1", " / 1 / 0", " / 2 / 0"]
    assert [labels(g) for g in cs.groups()] == [["a0", "a1"], ["b0"], ["c0"]]


def test_list_of_memory_configsets_one_group_each():
    cs1 = ConfigSet([h2("a"), h2("b")])
    cs2 = ConfigSet(h2("c"))
    cs3 = ConfigSet([[h2("d")], [h2("e")]])
    cs = ConfigSet([cs1, ConfigSet(None), cs2, cs3])
    assert labels(cs) == ["a", "b", "c", "d", "e"]
    assert locs(cs) == [" / 0 / 0", " / 0 / 1", " / 1 / 0", " / 2 / 0 / 0", " / 2 / 1 / 0"]
    assert tree(cs) == [["a", "b"], ["c"], [["d"], ["e"]]]
    # the parts are not changed by being combined
    assert locs(cs1) == [" / 0", " / 1"]


def test_add(tmp_path):
    mem = ConfigSet([h2("a")]) + ConfigSet([h2("b"), h2("c")])
    assert tree(mem) == [["a"], ["b", "c"]]
    assert locs(mem) == [" / 0 / 0", " / 1 / 0", " / 1 / 1"]

    p1 = write_xyz(tmp_path / "1.xyz", ["x"])
    p2 = write_xyz(tmp_path / "2.xyz", ["y", "z"])
    files = ConfigSet(p1) + ConfigSet(p2)
    assert files.files() == [p1, p2]
    assert locs(files) == [" / 0 / 0", " / 1 / 0", " / 1 / 1"]
    assert labels(files) == ["x", "y", "z"]

    with pytest.raises(TypeError):
        ConfigSet([h2("a")]) + [h2("b")]


def test_mixing_files_and_memory_raises(tmp_path):
    path = write_xyz(tmp_path / "in.xyz", ["a"])
    with pytest.raises(ValueError):
        ConfigSet([h2("x"), str(path)])
    with pytest.raises(ValueError):
        ConfigSet([path, h2("x")])
    with pytest.raises(ValueError):
        ConfigSet([ConfigSet(path), ConfigSet([h2("x")])])
    with pytest.raises(ValueError):
        ConfigSet([h2("x")]) + ConfigSet(path)
    with pytest.raises(ValueError):
        ConfigSet([ConfigSet([h2("x")]), h2("y")])


# ----------------------------------------------------------------------------- groups()

def test_groups_in_memory_atoms_and_subsets():
    a, b, c, d, e = (h2(x) for x in "abcde")
    cs = ConfigSet([a, [b, c], [[d], e]])
    list(cs)  # puts locations in info, which groups() must remove from top-level Atoms
    groups = list(cs.groups())
    assert groups[0] is a and LOC not in a.info
    assert isinstance(groups[1], ConfigSet) and isinstance(groups[2], ConfigSet)
    # locations inside a group are relative to the group
    assert labels(groups[1]) == ["b", "c"]
    assert locs(groups[1]) == [" / 0", " / 1"]
    assert locs(groups[2]) == [" / 0 / 0", " / 1"]
    assert tree(cs) == ["a", ["b", "c"], [["d"], "e"]]


def test_groups_list_of_files(tmp_path):
    p1 = write_xyz(tmp_path / "1.xyz", ["a0", "a1"])
    p2 = write_xyz(tmp_path / "2.xyz", ["b0"])
    groups = list(ConfigSet([p1, p2]).groups())
    assert len(groups) == 2 and all(isinstance(g, ConfigSet) for g in groups)
    assert [g.one_file() for g in groups] == [p1, p2]
    assert [labels(g) for g in groups] == [["a0", "a1"], ["b0"]]
    assert locs(groups[1]) == [" / 0"]


def _nested_file(tmp_path, name="nested.xyz"):
    """A file written by OutputSpec from the nested in-memory input."""
    out = OutputSpec(tmp_path / name)
    src = ConfigSet(nested_mem())
    for at in src:
        out.store(at, src.cur_loc)
    out.close()
    return tmp_path / name


def test_groups_of_one_file_with_nested_locations(tmp_path):
    path = _nested_file(tmp_path)
    cs = ConfigSet(path)
    assert locs(cs) == NESTED_LOCS
    assert tree(cs) == NESTED_TREE
    groups = list(cs.groups())
    assert all(isinstance(g, ConfigSet) for g in groups)
    assert locs(groups[2]) == [" / 0 / 0", " / 0 / 1", " / 1"]


def test_groups_one_file_mixed_atoms_and_lists(tmp_path):
    out = OutputSpec(tmp_path / "mixed.xyz")
    out.store(h2("a"))            # " / 0"
    out.store([h2("b"), h2("c")])  # " / 1 / 0", " / 1 / 1"
    out.store(h2("d"))            # " / 2"
    out.close()
    cs = ConfigSet(tmp_path / "mixed.xyz")
    assert locs(cs) == [" / 0", " / 1 / 0", " / 1 / 1", " / 2"]
    groups = list(cs.groups())
    assert isinstance(groups[0], Atoms) and isinstance(groups[1], ConfigSet) and isinstance(groups[2], Atoms)
    assert tree(cs) == ["a", ["b", "c"], "d"]
    assert LOC not in groups[0].info


@pytest.mark.parametrize("source", ["memory", "one_file", "files"])
def test_groups_used_out_of_order(tmp_path, source):
    if source == "memory":
        cs = ConfigSet(nested_mem())
        expected = [["a", "b"], ["c"], ["d", "e", "f"]]
    elif source == "one_file":
        cs = ConfigSet(_nested_file(tmp_path))
        expected = [["a", "b"], ["c"], ["d", "e", "f"]]
    else:
        cs = ConfigSet([write_xyz(tmp_path / "1.xyz", ["a", "b"]), write_xyz(tmp_path / "2.xyz", ["c"]),
                        write_xyz(tmp_path / "3.xyz", ["d", "e", "f"])])
        expected = [["a", "b"], ["c"], ["d", "e", "f"]]

    gs = list(cs.groups())
    assert len(gs) == 3
    # reverse order
    assert [labels(g) for g in reversed(gs)] == expected[::-1]
    # group 2 before group 1, then group 0, then group 2 again
    assert labels(gs[2]) == expected[2]
    assert labels(gs[1]) == expected[1]
    assert labels(gs[0]) == expected[0]
    assert labels(gs[2]) == expected[2]

    # interleaved iteration of two groups
    it0, it2 = iter(gs[0]), iter(gs[2])
    interleaved = [next(it2).info["label"], next(it0).info["label"], next(it2).info["label"],
                   next(it0).info["label"]]
    assert interleaved == [expected[2][0], expected[0][0], expected[2][1], expected[0][1]]

    # a group taken from a fresh groups() iterator, skipping earlier ones without using them
    groups_iter = cs.groups()
    next(groups_iter)
    next(groups_iter)
    last = next(groups_iter)
    assert labels(last) == expected[2]


def test_groups_from_partially_consumed_generator(tmp_path):
    # use each group before asking for the next: the usual pattern
    cs = ConfigSet(_nested_file(tmp_path))
    seen = []
    for g in cs.groups():
        seen.append(labels(g))
    assert seen == [["a", "b"], ["c"], ["d", "e", "f"]]


@pytest.mark.parametrize("source", ["memory", "one_file"])
def test_nested_groups_of_a_group(tmp_path, source):
    cs = ConfigSet(nested_mem()) if source == "memory" else ConfigSet(_nested_file(tmp_path))
    third = list(cs.groups())[2]
    inner = list(third.groups())
    assert isinstance(inner[0], ConfigSet) and isinstance(inner[1], Atoms)
    assert inner[1].info["label"] == "f"
    assert labels(inner[0]) == ["d", "e"]
    assert locs(inner[0]) == [" / 0", " / 1"]
    assert [x.info["label"] for x in inner[0].groups()] == ["d", "e"]
    # the group may still be iterated after its groups were taken
    assert labels(third) == ["d", "e", "f"]


def test_nested_groups_of_a_file_group(tmp_path):
    out = OutputSpec(tmp_path / "f.xyz")
    out.store([[h2("a"), h2("b")], h2("c")], " / 0")
    out.close()
    cs = ConfigSet([tmp_path / "f.xyz"])  # list of one file: one group, the file
    (file_group,) = cs.groups()
    assert tree(file_group) == [[["a", "b"], "c"]]
    (inner,) = file_group.groups()
    assert tree(inner) == [["a", "b"], "c"]


# ----------------------------------------------------------------------------- one_file()

def test_one_file_variants(tmp_path):
    p1 = write_xyz(tmp_path / "1.xyz", ["a"])
    p2 = write_xyz(tmp_path / "2.xyz", ["b"])
    assert ConfigSet(p1).one_file() == p1
    assert ConfigSet(str(p1)).one_file() == p1
    assert ConfigSet([p1]).one_file() == p1
    assert ConfigSet("1.xyz", file_root=tmp_path).one_file() == p1
    assert ConfigSet([p1, p2]).one_file() is False
    assert ConfigSet(str(tmp_path / "*.xyz")).one_file() is False
    assert ConfigSet([h2("a")]).one_file() is False
    assert ConfigSet(None).one_file() is False
    assert OutputSpec(p2, overwrite=True).to_ConfigSet().one_file() == p2


# ----------------------------------------------------------------------------- OutputSpec in memory

def test_memory_store_without_locations():
    out = OutputSpec()
    for x in "abc":
        out.store(h2(x))
    out.store([h2("d"), h2("e")])
    out.store(None)  # stores nothing
    out.close()
    cs = out.to_ConfigSet()
    assert labels(cs) == ["a", "b", "c", "d", "e"]
    assert locs(cs) == [" / 0", " / 1", " / 2", " / 3 / 0", " / 3 / 1"]
    assert out.all_written() is False
    assert out.paths == []


def test_memory_store_with_locations_rebuilds_nesting():
    src = ConfigSet(nested_mem())
    out = OutputSpec()
    for at in src:
        out.store(at, at.info[LOC])
    out.close()
    cs = out.to_ConfigSet()
    assert labels(cs) == ["a", "b", "c", "d", "e", "f"]
    assert locs(cs) == NESTED_LOCS
    assert tree(cs) == NESTED_TREE


def test_memory_store_out_of_order_locations_iterates_in_location_order():
    out = OutputSpec()
    out.store(h2("c"), " / 1 / 0")
    out.store(h2("b"), " / 0 / 1")
    out.store(h2("a"), (0, 0))  # a tuple location is accepted too
    cs = out.to_ConfigSet()
    assert labels(cs) == ["a", "b", "c"]
    assert locs(cs) == [" / 0 / 0", " / 0 / 1", " / 1 / 0"]


def test_memory_store_list_output_one_level_deeper():
    src = ConfigSet([h2("a"), h2("b")])
    out = OutputSpec()
    for at in src:
        x = at.info["label"]
        out.store([h2(x + "1"), h2(x + "2")], src.cur_loc)
    cs = out.to_ConfigSet()
    assert locs(cs) == [" / 0 / 0", " / 0 / 1", " / 1 / 0", " / 1 / 1"]
    assert tree(cs) == [["a1", "a2"], ["b1", "b2"]]


def test_memory_skipped_input_keeps_later_locations():
    src = ConfigSet([h2("a"), h2("b"), h2("c")])
    out = OutputSpec()
    for at in src:
        if at.info["label"] != "b":
            out.store(at, src.cur_loc)
    cs = out.to_ConfigSet()
    assert labels(cs) == ["a", "c"]
    assert locs(cs) == [" / 0", " / 2"]


def test_memory_store_into_a_structure_raises():
    out = OutputSpec()
    out.store(h2("a"), " / 0")
    with pytest.raises(ValueError):
        out.store(h2("b"), " / 0 / 1")


@pytest.mark.parametrize("bad", [" / x", "0 / 1", " / 1 / "])
def test_malformed_location_raises(bad):
    with pytest.raises(ValueError, match=LOC):
        OutputSpec().store(h2("a"), bad)


# ----------------------------------------------------------------------------- OutputSpec, one file

def test_one_file_written_under_partial_name_until_close(tmp_path):
    final = tmp_path / "out.xyz"
    partial = io.partial_path(final)
    assert partial.parent == final.parent and partial.name.startswith(".")
    out = OutputSpec(final)
    assert out.paths == [final]
    out.store(h2("a"))
    out.store(h2("b"))
    assert not final.exists()
    assert partial.exists()
    assert out.all_written() is False
    # flush=True: what was stored is already in the partial file
    assert [a.info["label"] for a in ase.io.read(partial, ":", format="extxyz")] == ["a", "b"]
    out.close()
    assert final.exists()
    assert not partial.exists()
    assert out.all_written() is True
    assert labels(ConfigSet(final)) == ["a", "b"]
    out.close()  # a second close does nothing
    assert final.exists()


def test_one_file_stored_locations_reproduce_nesting(tmp_path):
    path = _nested_file(tmp_path)
    stored = [a.info[LOC] for a in ase.io.read(path, ":")]
    assert stored == NESTED_LOCS
    cs = ConfigSet(path)
    assert iter_with_cur_loc(cs) == [(x, loc, loc) for x, loc in zip("abcdef", NESTED_LOCS)]
    assert tree(cs) == NESTED_TREE


def test_one_file_store_without_location_numbers_outputs(tmp_path):
    out = OutputSpec(tmp_path / "o.xyz")
    out.store(h2("a"))
    out.store([h2("b"), h2("c")])
    out.store(None)
    out.store(h2("d"))
    out.close()
    cs = out.to_ConfigSet()
    assert locs(cs) == [" / 0", " / 1 / 0", " / 1 / 1", " / 2"]
    assert tree(cs) == ["a", ["b", "c"], "d"]


def test_store_with_and_without_location_cannot_be_mixed(tmp_path):
    out = OutputSpec(tmp_path / "o.xyz")
    out.store(h2("a"))
    with pytest.raises(ValueError):
        out.store(h2("b"), " / 1")
    out.discard()

    out = OutputSpec(tmp_path / "o.xyz")
    out.store(h2("a"), " / 0")
    with pytest.raises(ValueError):
        out.store(h2("b"))
    out.discard()
    assert not (tmp_path / "o.xyz").exists()


def test_one_file_from_files_input_keeps_file_level(tmp_path):
    p1 = write_xyz(tmp_path / "in1.xyz", ["a0", "a1"])
    p2 = write_xyz(tmp_path / "in2.xyz", ["b0"])
    out = OutputSpec(tmp_path / "all.xyz")
    out.write(ConfigSet([p1, p2]))
    cs = ConfigSet(tmp_path / "all.xyz")
    assert locs(cs) == [" / 0 / 0", " / 0 / 1", " / 1 / 0"]
    assert tree(cs) == [["a0", "a1"], ["b0"]]


# ----------------------------------------------------------------------------- OutputSpec, several files

def test_several_files_first_level_picks_file(tmp_path):
    p1 = write_xyz(tmp_path / "in1.xyz", ["a0", "a1"])
    p2 = write_xyz(tmp_path / "in2.xyz", ["b0", "b1", "b2"])
    src = ConfigSet([p1, p2])
    outs = [tmp_path / "out1.xyz", tmp_path / "out2.xyz"]
    out = OutputSpec(outs)
    for at in src:
        at.info["done"] = True
        out.store(at, src.cur_loc)
    assert not any(p.exists() for p in outs)
    out.close()
    assert all(p.exists() for p in outs)
    assert labels(ConfigSet(outs[0])) == ["a0", "a1"]
    assert labels(ConfigSet(outs[1])) == ["b0", "b1", "b2"]
    # stored locations are relative to each file
    assert locs(ConfigSet(outs[1])) == [" / 0", " / 1", " / 2"]

    back = out.to_ConfigSet()
    assert back.files() == outs
    assert locs(back) == locs(src)
    assert [labels(g) for g in back.groups()] == [["a0", "a1"], ["b0", "b1", "b2"]]
    assert all(at.info["done"] for at in back)


def test_several_files_alternating_stores(tmp_path):
    outs = [tmp_path / "o0.xyz", tmp_path / "o1.xyz"]
    out = OutputSpec(outs)
    out.store(h2("x0"), " / 0 / 0")
    out.store(h2("y0"), " / 1 / 0")
    out.store(h2("x1"), " / 0 / 1")
    out.store(h2("y1"), " / 1 / 1")
    out.close()
    assert labels(ConfigSet(outs[0])) == ["x0", "x1"]
    assert labels(ConfigSet(outs[1])) == ["y0", "y1"]


def test_several_files_top_level_locations_store_no_stale_location(tmp_path):
    # inputs at " / 0" and " / 1": each output file gets one structure at its top level
    src = ConfigSet([h2("a"), h2("b")])
    outs = [tmp_path / "o0.xyz", tmp_path / "o1.xyz"]
    OutputSpec(outs).write(src)
    cs = ConfigSet(outs)
    assert labels(cs) == ["a", "b"]
    # the location each structure had in the input must not leak into the file
    assert locs(ConfigSet(outs[1])) == [" / 0"]
    assert locs(cs) == [" / 0 / 0", " / 1 / 0"]


def test_round_trip_file_files_memory(tmp_path):
    p1 = write_xyz(tmp_path / "in1.xyz", ["a0", "a1", "a2"])
    p2 = write_xyz(tmp_path / "in2.xyz", ["b0"])
    src = ConfigSet([p1, p2])

    one = OutputSpec("one.xyz", file_root=tmp_path)
    one.write(src)
    files = OutputSpec(["f1.xyz", "f2.xyz"], file_root=tmp_path)
    files.write(one.to_ConfigSet())
    mem = OutputSpec()
    mem.write(files.to_ConfigSet())

    for cs in (one.to_ConfigSet(), files.to_ConfigSet(), mem.to_ConfigSet()):
        assert labels(cs) == ["a0", "a1", "a2", "b0"]
        assert locs(cs) == [" / 0 / 0", " / 0 / 1", " / 0 / 2", " / 1 / 0"]
        assert tree(cs) == [["a0", "a1", "a2"], ["b0"]]
    assert labels(ConfigSet(tmp_path / "f2.xyz")) == ["b0"]


def test_file_receiving_nothing_is_created_empty(tmp_path):
    outs = [tmp_path / "o0.xyz", tmp_path / "o1.xyz", tmp_path / "o2.xyz"]
    out = OutputSpec(outs)
    out.store(h2("a"), " / 0 / 0")
    out.store(h2("c"), " / 2 / 0")
    out.close()
    assert outs[1].exists() and outs[1].stat().st_size == 0
    assert out.all_written() is True
    assert list(ConfigSet(outs[1])) == []
    cs = out.to_ConfigSet()
    assert labels(cs) == ["a", "c"]
    assert locs(cs) == [" / 0 / 0", " / 2 / 0"]
    assert [labels(g) for g in cs.groups()] == [["a"], [], ["c"]]


def test_one_file_receiving_nothing(tmp_path):
    out = OutputSpec(tmp_path / "o.xyz")
    out.close()
    assert (tmp_path / "o.xyz").exists()
    assert list(out.to_ConfigSet()) == []
    assert list(out.to_ConfigSet().groups()) == []

    out = OutputSpec(tmp_path / "w.xyz")
    out.write(ConfigSet(None))
    assert (tmp_path / "w.xyz").read_bytes() == b""


def test_several_files_without_location_raises(tmp_path):
    out = OutputSpec([tmp_path / "a.xyz", tmp_path / "b.xyz"])
    with pytest.raises(ValueError, match="input_CS_loc"):
        out.store(h2("a"))


def test_several_files_location_beyond_files_raises(tmp_path):
    out = OutputSpec([tmp_path / "a.xyz", tmp_path / "b.xyz"])
    with pytest.raises(ValueError, match="2 files"):
        out.store(h2("a"), " / 2 / 0")


def test_empty_files_list_raises():
    with pytest.raises(ValueError):
        OutputSpec([])


# ----------------------------------------------------------------------------- tags, overwrite, all_written

def test_tags_on_every_stored_structure_memory():
    out = OutputSpec(tags={"method": "test", "n": 3})
    out.store(h2("a"))
    out.store([h2("b"), [h2("c")]])
    out.store([h2("d"), None, h2("e")], " / 5")
    cs = out.to_ConfigSet()
    got = list(cs)
    assert labels(got) == ["a", "b", "c", "d", "e"]
    assert all(at.info["method"] == "test" and at.info["n"] == 3 for at in got)


def test_tags_on_every_stored_structure_file(tmp_path):
    src = ConfigSet([[h2("a"), h2("b")], [h2("c")]])
    out = OutputSpec(tmp_path / "o.xyz", tags={"method": "test", "n": 3})
    for at in src:
        out.store([at, h2(at.info["label"] + "x")], src.cur_loc)
    out.close()
    read = ase.io.read(tmp_path / "o.xyz", ":")
    assert len(read) == 6
    assert all(at.info["method"] == "test" and at.info["n"] == 3 for at in read)
    assert labels(out.to_ConfigSet()) == ["a", "ax", "b", "bx", "c", "cx"]


def test_overwrite_false_existing_file_raises_at_first_store(tmp_path):
    final = write_xyz(tmp_path / "out.xyz", ["old"])
    out = OutputSpec(final)  # no error yet
    assert out.all_written() is True
    with pytest.raises(FileExistsError, match=re.escape(str(final))):
        out.store(h2("new"))
    assert labels(ConfigSet(final)) == ["old"]

    # with several files, the error names the existing one(s)
    other = tmp_path / "fresh.xyz"
    out = OutputSpec([other, final])
    assert out.all_written() is False
    with pytest.raises(FileExistsError, match=re.escape(str(final))):
        out.store(h2("new"), " / 0 / 0")
    assert not other.exists()
    assert labels(ConfigSet(final)) == ["old"]


def test_overwrite_true_replaces(tmp_path):
    final = write_xyz(tmp_path / "out.xyz", ["old1", "old2"])
    out = OutputSpec(final, overwrite=True)
    out.store(h2("new"))
    assert labels(ConfigSet(final)) == ["old1", "old2"]  # untouched until close
    out.close()
    assert labels(ConfigSet(final)) == ["new"]


def test_all_written(tmp_path):
    outs = [tmp_path / "a.xyz", tmp_path / "b.xyz"]
    out = OutputSpec(outs)
    assert out.all_written() is False
    out.store(h2("a"), " / 0 / 0")
    out.store(h2("b"), " / 1 / 0")
    assert out.all_written() is False
    out.close()
    assert out.all_written() is True
    assert OutputSpec(outs).all_written() is True
    outs[1].unlink()
    assert OutputSpec(outs).all_written() is False
    assert OutputSpec().all_written() is False


# ----------------------------------------------------------------------------- write(), discard(), context manager

def test_write_round_trip_and_reuse(tmp_path):
    src = ConfigSet(nested_mem())
    final = tmp_path / "w.xyz"
    out = OutputSpec(final)
    out.write(src)
    assert out.closed and out.all_written()
    assert tree(out.to_ConfigSet()) == NESTED_TREE
    assert locs(out.to_ConfigSet()) == NESTED_LOCS
    content = final.read_bytes()

    # all files exist and overwrite is False: reused, nothing written, no error
    again = OutputSpec(final)
    again.write(ConfigSet([h2("other")]))
    assert final.read_bytes() == content
    assert tree(again.to_ConfigSet()) == NESTED_TREE

    # overwrite=True writes again
    OutputSpec(final, overwrite=True).write(ConfigSet([h2("other")]))
    assert labels(ConfigSet(final)) == ["other"]


def test_write_reuse_inside_with_block(tmp_path):
    final = tmp_path / "w.xyz"
    with OutputSpec(final) as out:
        out.write(ConfigSet([h2("a")]))
    content = final.read_bytes()
    # second run: output is reused, and leaving the block must not fail or change it
    with OutputSpec(final) as out:
        out.write(ConfigSet([h2("b")]))
    assert final.read_bytes() == content
    assert labels(ConfigSet(final)) == ["a"]


def test_write_with_some_files_existing_raises(tmp_path):
    existing = write_xyz(tmp_path / "b.xyz", ["old"])
    out = OutputSpec([tmp_path / "a.xyz", existing])
    with pytest.raises(FileExistsError, match=re.escape(str(existing))):
        out.write(ConfigSet([[h2("x")], [h2("y")]]))
    assert not (tmp_path / "a.xyz").exists()
    assert not io.partial_path(tmp_path / "a.xyz").exists()
    assert labels(ConfigSet(existing)) == ["old"]


def test_write_plain_list(tmp_path):
    out = OutputSpec(tmp_path / "l.xyz")
    out.write([h2("a"), h2("b")])
    assert locs(out.to_ConfigSet()) == [" / 0", " / 1"]
    assert labels(out.to_ConfigSet()) == ["a", "b"]


def test_discard_removes_partials_and_leaves_finals(tmp_path):
    existing = write_xyz(tmp_path / "b.xyz", ["old"])
    before = existing.read_bytes()
    outs = [tmp_path / "a.xyz", existing]
    out = OutputSpec(outs, overwrite=True)
    out.store(h2("x"), " / 0 / 0")
    out.store(h2("y"), " / 1 / 0")
    assert io.partial_path(outs[0]).exists() and io.partial_path(outs[1]).exists()
    out.discard()
    assert not io.partial_path(outs[0]).exists() and not io.partial_path(outs[1]).exists()
    assert not outs[0].exists()
    assert existing.read_bytes() == before
    assert out.closed
    with pytest.raises(ValueError):
        out.store(h2("z"), " / 0 / 1")
    out.close()  # after discard, close publishes nothing
    assert not outs[0].exists()
    assert existing.read_bytes() == before


def test_stale_partial_from_killed_run_is_replaced(tmp_path):
    final = tmp_path / "o.xyz"
    partial = io.partial_path(final)
    ase.io.write(partial, [h2("stale")], format="extxyz")
    out = OutputSpec(final)
    out.store(h2("fresh"))
    out.close()
    assert labels(ConfigSet(final)) == ["fresh"]

    ase.io.write(partial, [h2("stale")], format="extxyz")
    OutputSpec(tmp_path / "e.xyz").close()
    OutputSpec(final, overwrite=True).close()
    assert list(ConfigSet(final)) == []


def test_context_manager_success_closes(tmp_path):
    final = tmp_path / "o.xyz"
    with OutputSpec(final) as out:
        out.store(h2("a"))
        assert not final.exists()
    assert out.closed and final.exists()
    assert labels(ConfigSet(final)) == ["a"]


def test_context_manager_exception_discards(tmp_path):
    final = tmp_path / "o.xyz"
    with pytest.raises(RuntimeError, match="boom"):
        with OutputSpec(final) as out:
            out.store(h2("a"))
            raise RuntimeError("boom")
    assert not final.exists()
    assert not io.partial_path(final).exists()
    assert listing(tmp_path) == []

    existing = write_xyz(tmp_path / "keep.xyz", ["old"])
    with pytest.raises(KeyError):
        with OutputSpec(existing, overwrite=True) as out:
            out.store(h2("new"))
            raise KeyError("x")
    assert labels(ConfigSet(existing)) == ["old"]
    assert not io.partial_path(existing).exists()


def test_output_directory_created(tmp_path):
    final = tmp_path / "new" / "deeper" / "o.xyz"
    out = OutputSpec(final)
    out.store(h2("a"))
    out.close()
    assert labels(ConfigSet(final)) == ["a"]

    out = OutputSpec(["x/a.xyz", "y/z/b.xyz"], file_root=tmp_path / "root")
    out.store(h2("b"), " / 0 / 0")
    out.close()  # b.xyz received nothing: its directory is created too
    assert labels(ConfigSet(tmp_path / "root" / "x" / "a.xyz")) == ["b"]
    assert (tmp_path / "root" / "y" / "z" / "b.xyz").read_bytes() == b""


def test_file_root_paths_and_absolute_error(tmp_path):
    out = OutputSpec(["a.xyz", "b.xyz"], file_root=tmp_path)
    assert out.paths == [tmp_path / "a.xyz", tmp_path / "b.xyz"]
    with pytest.raises(ValueError, match="absolute"):
        OutputSpec(tmp_path / "a.xyz", file_root=tmp_path)


def test_store_after_close_raises(tmp_path):
    out = OutputSpec()
    out.store(h2("a"))
    out.close()
    with pytest.raises(ValueError, match="close"):
        out.store(h2("b"))
    assert labels(out.to_ConfigSet()) == ["a"]

    out = OutputSpec(tmp_path / "o.xyz")
    out.store(h2("a"))
    out.close()
    with pytest.raises(ValueError, match="close"):
        out.store(h2("b"))
    assert labels(ConfigSet(tmp_path / "o.xyz")) == ["a"]


def test_write_kwargs_format_with_txt_name(tmp_path):
    final = tmp_path / "out.txt"
    out = OutputSpec(final, write_kwargs={"format": "extxyz"})
    src = ConfigSet([[h2("a")], [h2("b"), h2("c")]])
    out.write(src)
    text = final.read_text()
    assert text.count("Properties=species:S:1:pos:R:3") == 3
    read = ase.io.read(final, ":", format="extxyz")
    assert [a.info["label"] for a in read] == ["a", "b", "c"]
    assert [a.info[LOC] for a in read] == [" / 0 / 0", " / 1 / 0", " / 1 / 1"]
    assert labels(ConfigSet(final, read_kwargs={"format": "extxyz"})) == ["a", "b", "c"]
    # the OutputSpec knows the format it wrote, so its ConfigSet reads the file back
    cs = out.to_ConfigSet()
    assert labels(cs) == ["a", "b", "c"]
    assert tree(cs) == [["a"], ["b", "c"]]


@pytest.mark.parametrize("name", ["out.unknownext", "out.json", "out.traj", "POSCAR"])
def test_output_format_that_cannot_grow_is_refused_before_any_work(tmp_path, name):
    # outputs are written one structure at a time: only streamable text formats work
    with pytest.raises(ValueError, match=name) as info:
        OutputSpec(tmp_path / name)
    assert "extxyz" in str(info.value)
    assert listing(tmp_path) == []


def test_list_of_one_configset_is_one_group_as_in_wfl(tmp_path):
    mem = ConfigSet([h2("a"), h2("b")])
    assert [at.info["_ConfigSet_loc"] for at in ConfigSet([mem])] == [" / 0 / 0", " / 0 / 1"]
    assert [at.info["_ConfigSet_loc"] for at in ConfigSet(mem)] == [" / 0", " / 1"]
    path = tmp_path / "a.xyz"
    ase.io.write(path, [h2("a"), h2("b")])
    assert [at.info["_ConfigSet_loc"] for at in ConfigSet([ConfigSet(path)])] == [" / 0 / 0", " / 0 / 1"]
    assert [at.info["_ConfigSet_loc"] for at in ConfigSet(ConfigSet(path))] == [" / 0", " / 1"]


def test_memory_store_refuses_to_overwrite_a_location():
    out = OutputSpec()
    out.store(h2("a"), " / 0")
    with pytest.raises(ValueError, match="already holds"):
        out.store(h2("b"), " / 0")
    assert [at.info["label"] for at in out.to_ConfigSet()] == ["a"]


def test_n_stored_counts_structures(tmp_path):
    for out in (OutputSpec(), OutputSpec(tmp_path / "o.xyz")):
        out.store(h2("a"), " / 0")
        out.store([h2("b"), h2("c")], " / 1")
        out.close()
        assert out.n_stored == 3


def test_flush_false_still_complete_after_close(tmp_path):
    out = OutputSpec(tmp_path / "o.xyz", flush=False)
    for x in "abc":
        out.store(h2(x))
    out.close()
    assert labels(ConfigSet(tmp_path / "o.xyz")) == ["a", "b", "c"]


# ----------------------------------------------------------------------------- full round trip of properties

def test_round_trip_memory_file_files_memory_keeps_properties(tmp_path):
    originals = rich_structures()
    reference = [at.copy() for at in originals]
    src = ConfigSet([[originals[0], originals[1]], [originals[2]]])

    one = OutputSpec(tmp_path / "one.xyz")
    one.write(src)
    files = OutputSpec([tmp_path / "f0.xyz", tmp_path / "f1.xyz"])
    files.write(one.to_ConfigSet())
    mem = OutputSpec()
    mem.write(files.to_ConfigSet())

    for cs in (one.to_ConfigSet(), files.to_ConfigSet(), mem.to_ConfigSet()):
        got = list(cs)
        assert locs(got) == [" / 0 / 0", " / 0 / 1", " / 1 / 0"]
        assert len(got) == 3
        for a, b in zip(reference, got):
            assert_same_structure(a, b)
    assert tree(mem.to_ConfigSet()) == [["r0", "r1"], ["r2"]]


def test_round_trip_bulk_cu(tmp_path):
    structures = [cu("c0"), cu("c1", a=3.7)]
    structures[1].info["extra"] = 1.25
    out = OutputSpec(tmp_path / "cu.extxyz")
    out.write(ConfigSet([s.copy() for s in structures]))
    for a, b in zip(structures, ConfigSet(tmp_path / "cu.extxyz")):
        assert_same_structure(a, b)


# ----------------------------------------------------------------------------- damaged input files

def _damaged(tmp_path):
    path = write_xyz(tmp_path / "damaged.xyz", ["a", "b", "c"])
    text = path.read_text()
    path.write_text(text[: len(text) - 30])  # cut inside the last structure
    return path


def test_truncated_file_raises_input_file_error_naming_file(tmp_path):
    path = _damaged(tmp_path)
    cs = ConfigSet(path)
    seen = []
    with pytest.raises(InputFileError, match=re.escape(str(path))) as info:
        for at in cs:
            seen.append(at.info["label"])
    assert seen == ["a", "b"]  # the complete structures come first
    assert isinstance(info.value, ValueError)
    assert "frame 2" in str(info.value)


def test_truncated_file_in_list_and_groups(tmp_path):
    good = write_xyz(tmp_path / "good.xyz", ["g"])
    path = _damaged(tmp_path)
    with pytest.raises(InputFileError, match=re.escape(str(path))):
        list(ConfigSet([good, path]))
    with pytest.raises(InputFileError, match=re.escape(str(path))):
        list(ConfigSet(path).groups())
    gs = list(ConfigSet([good, path]).groups())
    assert labels(gs[0]) == ["g"]
    with pytest.raises(InputFileError, match=re.escape(str(path))):
        list(gs[1])


def test_garbage_file_raises_input_file_error(tmp_path):
    path = tmp_path / "garbage.xyz"
    path.write_text("this is not\nan extended xyz file\n")
    with pytest.raises(InputFileError, match=re.escape(str(path))):
        list(ConfigSet(path))


def test_file_removed_after_construction(tmp_path):
    path = write_xyz(tmp_path / "gone.xyz", ["a"])
    cs = ConfigSet(path)
    path.unlink()
    with pytest.raises(InputFileError, match=re.escape(str(path))):
        list(cs)
