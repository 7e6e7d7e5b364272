"""``spineplan report PLAN_DIR --ct CT --labels FILE``: regenerates both reports of a plan folder."""

from __future__ import annotations

import json

import pytest

from _phantoms import get_phantom
from _planner import spine_from_truth
from _report import pdf_pages_text
from spineplan.cli import main

KW = dict(levels="T12-L1", spacing=2.0, fracture=("T12", 2, "wedge"))


@pytest.fixture(scope="module")
def plan_dir(tmp_path_factory):
    from spineplan.phantom import write_phantom
    from spineplan.plan.access import plan_access
    from spineplan.plan.model import CTRef, Plan

    ph = get_phantom(**KW)
    root = tmp_path_factory.mktemp("cli")
    files = write_phantom(ph, root / "phantom")
    spine = spine_from_truth(ph)
    for v in spine.vertebrae:
        v.fracture = dict(ph.truth["vertebrae"][v.name]["fracture"])
    acc, warns = plan_access(ph.ct, spine, procedure="vertebroplasty", gauge=13)
    plan = Plan(access=acc, warnings=warns, ct=CTRef.of(files["ct"], ph.ct))
    out = root / "plan"
    plan.save(out / "plan.json")
    return files, out


def test_report_command_writes_both_reports(plan_dir, capsys):
    files, out = plan_dir
    rc = main(["report", str(out), "--ct", str(files["ct"]), "--labels", str(files["labels"]),
               "--patient-name", "Ann Example"])
    assert rc == 0
    printed = capsys.readouterr().out
    for name in ("surgeon_report.pdf", "surgeon_report.html", "patient_report.pdf", "patient_report.html"):
        assert (out / name).is_file() and name in printed
    s = " ".join(pdf_pages_text(out / "surgeon_report.pdf"))
    p = " ".join(pdf_pages_text(out / "patient_report.pdf"))
    assert "vertebroplasty" in s and "T12" in s and "13 G" in s and "Ann Example" not in s
    assert "Ann Example" in p and "vertebroplasty" in p
    assert json.loads((out / "plan.json").read_text())["format"] == "spineplan.plan"  # plan untouched


def test_report_command_rejects_another_ct(plan_dir, tmp_path, capsys):
    files, out = plan_dir
    other = tmp_path / "other.nii.gz"
    other.write_bytes(files["ct"].read_bytes() + b"x")
    rc = main(["report", str(out), "--ct", str(other)])
    assert rc != 0 and "not the CT this plan was made on" in " ".join(capsys.readouterr().err.split())


def test_report_command_needs_a_plan(tmp_path, capsys):
    rc = main(["report", str(tmp_path), "--ct", str(tmp_path / "ct.nii.gz")])
    assert rc != 0 and "no plan.json" in " ".join(capsys.readouterr().err.split())
