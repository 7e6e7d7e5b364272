"""Planning on a scan whose level names cannot be counted (no sacrum, no rib found): a real
38 mm DICOM slab at T11/T12 (reference labels: TotalSegmentator T11, T12). The plan never
presents guessed names as fact, and ``--anchor`` fixes them."""

from __future__ import annotations

import json

import pytest

from _plan_outputs import run_cli
from spineplan.errors import InputError, PlanningError
from spineplan.workflow import NAMING_CONFIDENCE_MIN, run_plan

SLAB = "totalseg_example_dicom_T11T12/dicom"
#: LPS z (mm) inside the reference T12 label of the slab and above its T11/T12 disc
#: (reference T12 spans z -804.5 to -772.5, T11 -798.5 to -766.5)
T12_Z = -790.0


def test_unknown_names_are_not_presented_as_fact(data_file, tmp_path):
    out = tmp_path / "plan"
    with pytest.raises(PlanningError) as e:
        run_plan(data_file(SLAB), out, levels="L4", progress=False, reports=False, access_levels=None)
    msg = str(e.value)
    assert "uncertain" in msg and "--anchor" in msg and "confidence 0.15" in msg
    assert not out.exists()
    # a guessed name that is found: planned, with a danger warning of the wrong-level risk. Ribs
    # reach the slab's lower edge, so the guess is thoracic (lowest rib-bearing vertebra = T12,
    # which the reference labels confirm here), never lumbar
    plan = run_plan(data_file(SLAB), out, levels="T12", progress=False, reports=False, access_levels=None)
    assert plan.extra["naming"]["levels"][-2:] == ["T11", "T12"]
    warn = [w for w in plan.warnings if w.code == "names-uncertain"]
    assert len(warn) == 1 and warn[0].severity == "danger" and "WRONG LEVEL" in warn[0].message
    saved = json.loads((out / "plan.json").read_text())
    assert "names-uncertain" in {w["code"] for w in saved["warnings"]}


def test_anchor_names_the_slab_and_removes_the_warning(data_file, tmp_path):
    out = tmp_path / "plan"
    code, text = run_cli(["plan", data_file(SLAB), "--levels", "T12", "--anchor", f"T12@z={T12_Z}", "-o", out,
                          "--no-reports", "--access", "none", "--no-progress"])
    assert code == 0
    plan = json.loads((out / "plan.json").read_text())
    assert plan["naming"]["method"] == "user anchor T12"
    assert plan["naming"]["confidence"] >= NAMING_CONFIDENCE_MIN
    assert "T12" in plan["naming"]["levels"] and "T11" in plan["naming"]["levels"]
    assert "names-uncertain" not in {w["code"] for w in plan["warnings"]}
    assert "WRONG LEVEL" not in text


def test_anchor_with_labels_is_refused_before_reading(tmp_path):
    out = tmp_path / "plan"
    with pytest.raises(InputError, match="Drop one of the two"):
        run_plan(tmp_path / "missing.nii.gz", out, levels="L3", labels=tmp_path / "x.nii.gz", anchor="L3@z=0",
                 progress=False)
    assert not out.exists()
