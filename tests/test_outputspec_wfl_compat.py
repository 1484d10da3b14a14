"""OutputSpec as wfl scripts use it: the location separator, refusing existing files at the
first store (not at construction), and mixing stores with and without locations."""

import ase.io
import pytest
from ase import Atoms
from ase.calculators.emt import EMT

from wfl_like import ConfigSet, OutputSpec
from wfl_like.calculators.generic import calculate
from wfl_like.configset import MixedLocationsError


def cu(label):
    atoms = Atoms("Cu", positions=[[0, 0, 0]], cell=[3, 3, 3], pbc=True)
    atoms.info["label"] = label
    return atoms


def labels(path):
    return [at.info["label"] for at in ase.io.read(path, ":", parallel=False)]


def test_loc_sep_is_wfls_separator(tmp_path):
    assert ConfigSet._loc_sep == " / "
    out = OutputSpec(tmp_path / "o.xyz")
    for i in range(3):
        out.store(cu(i))
    out.close()
    written = ase.io.read(tmp_path / "o.xyz", ":", parallel=False)
    assert [at.info["_ConfigSet_loc"] for at in written] == [ConfigSet._loc_sep + str(i) for i in range(3)]
    # and a location built with it is understood by store()
    nested = OutputSpec(tmp_path / "n.xyz")
    nested.store([cu("a"), cu("b")], ConfigSet._loc_sep + "0")
    nested.close()
    assert [at.info["_ConfigSet_loc"] for at in ConfigSet(tmp_path / "n.xyz")] == [" / 0 / 0", " / 0 / 1"]


def test_existing_file_is_refused_at_the_first_store_and_left_alone(tmp_path):
    ase.io.write(tmp_path / "o.xyz", [cu("old")], parallel=False)
    before = (tmp_path / "o.xyz").read_bytes()
    out = OutputSpec("o.xyz", file_root=tmp_path)        # no error yet
    with pytest.raises(FileExistsError, match="o.xyz"):
        out.store(cu("new"))
    out.close()                                          # nothing to publish: no error either
    assert out.closed
    assert (tmp_path / "o.xyz").read_bytes() == before
    assert not list(tmp_path.glob(".*partial*"))
    # closing one that never stored anything leaves the existing file too
    untouched = OutputSpec(tmp_path / "o.xyz")
    untouched.close()
    assert (tmp_path / "o.xyz").read_bytes() == before


def test_overwrite_replaces_at_close(tmp_path):
    ase.io.write(tmp_path / "o.xyz", [cu("old")], parallel=False)
    out = OutputSpec("o.xyz", file_root=tmp_path, overwrite=True)
    out.store(cu("new"))
    assert labels(tmp_path / "o.xyz") == ["old"]         # replaced only when complete
    out.close()
    assert labels(tmp_path / "o.xyz") == ["new"]


@pytest.mark.parametrize("first_located", [True, False])
def test_mixing_stores_with_and_without_location_is_refused(tmp_path, first_located):
    out = OutputSpec(tmp_path / "o.xyz")
    first, second = (ConfigSet._loc_sep + "0", "") if first_located else ("", ConfigSet._loc_sep + "1")
    out.store(cu(0), first)
    with pytest.raises(MixedLocationsError, match="location") as info:
        out.store(cu(1), second)
    # wfl raises RuntimeError here, wfl_like's other checks of arguments ValueError: both catch it
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, ValueError)
    out.discard()
    assert not (tmp_path / "o.xyz").exists()


@pytest.mark.parametrize("cache", [None, False])
def test_existing_complete_outputs_of_an_operation_are_still_reused(tmp_path, cache):
    inputs = [cu(i) for i in range(4)]
    autopara = {"num_python_subprocesses": 2, "cache": cache}
    calculate(inputs, OutputSpec(tmp_path / "o.xyz"), EMT(), properties=["energy"], autopara_info=autopara)
    before = (tmp_path / "o.xyz").read_bytes()
    # a second OutputSpec(overwrite=False) over the complete file: the call returns it
    again = calculate(inputs, OutputSpec(tmp_path / "o.xyz"), EMT(), properties=["energy"],
                      autopara_info=autopara)
    assert [at.info["label"] for at in again] == [0, 1, 2, 3]
    assert (tmp_path / "o.xyz").read_bytes() == before
