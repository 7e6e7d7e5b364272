"""The plan workflow writes atomically: a failed run leaves no plan folder (and keeps an old one)."""

from __future__ import annotations

import pytest

from _plan_outputs import phantom_files
from spineplan.errors import InputError, PlanningError, SpinePlanError
from spineplan.workflow import run_plan


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return phantom_files(tmp_path_factory.mktemp("phantom"))


def _siblings(parent, name):
    return sorted(p.name for p in parent.iterdir() if name in p.name)


def test_failing_run_leaves_no_folder(phantom, tmp_path):
    bad = tmp_path / "catalogue.csv"
    bad.write_text("diameter_mm,length_mm\n65,45\n")  # 65 mm screws: rejected at the screw step
    out = tmp_path / "plan"
    with pytest.raises(SpinePlanError):
        run_plan(phantom["ct"], out, labels=phantom["labels"], levels="L3", catalogue=bad, progress=False)
    assert not out.exists()
    assert _siblings(tmp_path, "plan") == []  # no temporary folder left beside it


def test_failing_run_keeps_the_earlier_plan(phantom, tmp_path):
    out = tmp_path / "plan"
    out.mkdir()
    (out / "plan.json").write_text('{"earlier": true}')
    with pytest.raises(InputError):
        run_plan(tmp_path / "missing_ct.nii.gz", out, levels="L3", progress=False)
    assert (out / "plan.json").read_text() == '{"earlier": true}'
    assert _siblings(tmp_path, "plan") == ["plan"]


def test_refuses_to_overwrite_a_folder_that_is_not_a_plan(phantom, tmp_path):
    out = tmp_path / "mydata"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not an earlier spineplan plan"):
        run_plan(phantom["ct"], out, labels=phantom["labels"], levels="L3", progress=False)
    assert (out / "notes.txt").read_text() == "keep me"


def test_levels_are_required(phantom, tmp_path):
    with pytest.raises(PlanningError, match="--levels"):
        run_plan(phantom["ct"], tmp_path / "p", levels=None, progress=False)
    assert not (tmp_path / "p").exists()
