"""plan.json: round trip, validation and clear errors for malformed files."""

import json

import pytest

from spineplan.errors import PlanFormatError
from spineplan.plan.model import Access, Incision, Plan, Rod, Screw

DESIGN_EXAMPLE = {
    "format": "spineplan.plan", "version": 1, "frame": "LPS", "units": "mm",
    "ct": {"path": "scan.nii.gz", "sha256": "ab" * 32, "shape": [512, 512, 300], "spacing_mm": [0.7, 0.7, 1.0]},
    "screws": [{"level": "L4", "side": "left", "entry": [12.1, 30.4, -210.0], "tip": [4.0, -14.9, -213.2],
                "diameter_mm": 6.5, "length_mm": 46.0, "medial_angle_deg": 12.0, "cranial_angle_deg": -2.0,
                "grade": "A", "min_margin_mm": 1.6, "mean_hu": 231.0}],
    "rods": [{"side": "left", "points": [[12, 30, -180], [12, 31, -250]], "length_mm": 70.0}],
    "incisions": [{"side": "left", "start": [40, 80, -200], "end": [40, 80, -220], "length_mm": 20.0, "screws": [0]}],
    "access": [{"level": "L1", "procedure": "kyphoplasty", "side": "left", "skin": [50, 90, -100],
                "entry": [20, 40, -100], "target": [2, -10, -100], "gauge": 11}],
    "warnings": [{"level": "L5", "code": "narrow-pedicle", "message": "L5 right pedicle is 4.1 mm wide."}],
    "created_by": "another tool",
}


def test_design_example_round_trips_including_unknown_fields(tmp_path):
    plan = Plan.from_dict(json.loads(json.dumps(DESIGN_EXAMPLE)))
    assert plan.screws[0].label == "L4 left 6.5x46"
    assert plan.screws[0].extra == {"mean_hu": 231.0}
    path = plan.save(tmp_path / "plan.json")
    again = Plan.load(path)
    d = again.to_dict()
    for key in ("screws", "rods", "incisions", "access", "warnings", "ct", "created_by"):
        assert d[key] == plan.to_dict()[key]
    assert d["screws"][0]["mean_hu"] == 231.0 and d["format"] == "spineplan.plan" and d["version"] == 1
    assert "not a certified medical device" in d["disclaimer"]


def _broken(mutate):
    d = json.loads(json.dumps(DESIGN_EXAMPLE))
    mutate(d)
    return d


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(format="other"), "format"),
    (lambda d: d.update(version=2), "newer"),
    (lambda d: d.update(version="1"), "version"),
    (lambda d: d.update(frame="RAS"), "LPS"),
    (lambda d: d["screws"][0].update(level="L9"), r"screws\[0\].level"),
    (lambda d: d["screws"][0].update(side="up"), "side"),
    (lambda d: d["screws"][0].update(entry=[1, 2]), r"screws\[0\].entry"),
    (lambda d: d["screws"][0].update(tip=[1, float("nan"), 3]), "finite"),
    (lambda d: d["screws"][0].update(diameter_mm=-1), "positive"),
    (lambda d: d["screws"][0].update(length_mm=30.0), "must agree within 0.5 mm"),
    (lambda d: d["screws"][0].update(grade="F"), "A-E"),
    (lambda d: d["screws"][0].pop("tip"), "missing 'tip'"),
    (lambda d: d["rods"][0].update(points=[[0, 0, 0]]), "two points"),
    (lambda d: d["incisions"][0].update(screws=[3]), "do not exist"),
    (lambda d: d["access"][0].update(gauge=40), "gauge"),
    (lambda d: d["access"][0].update(procedure="fusion"), "kyphoplasty"),
    (lambda d: d["warnings"][0].pop("message"), "message"),
])
def test_malformed_plans_are_refused_with_the_place(mutate, message):
    with pytest.raises(PlanFormatError, match=message):
        Plan.from_dict(_broken(mutate), source="bad.json")


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(PlanFormatError, match="no such plan file"):
        Plan.load(tmp_path / "missing.json")
    trunc = tmp_path / "trunc.json"
    trunc.write_text(json.dumps(DESIGN_EXAMPLE)[:200])
    with pytest.raises(PlanFormatError, match="trunc.json: not valid JSON"):
        Plan.load(trunc)


def test_plan_objects_build_and_validate():
    s = Screw("L5", "right", [0, 0, 0], [0, -45, 0], 7.0, 45.0)
    r = Rod("right", [[0, 0, 0], [0, 0, -40]], 45.0)
    i = Incision("right", [0, 60, 5], [0, 60, -15], 20.0, [0])
    a = Access("L1", "vertebroplasty", "left", [0, 80, 0], [0, 30, 0], [0, -10, 0], 13)
    p = Plan(screws=[s], rods=[r], incisions=[i], access=[a])
    p.warn("narrow-pedicle", "L5 right is narrow", level="L5")
    q = Plan.from_dict(p.to_dict())
    assert q.screw("L5", "right").length_mm == 45.0 and q.screw("L5", "left") is None
    assert q.warnings[0].level == "L5" and q.access[0].gauge == 13
