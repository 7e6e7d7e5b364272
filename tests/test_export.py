"""Exports: screws.csv, Slicer markups (validated against Slicer's schema), STL, seg.nrrd, pictures."""

from __future__ import annotations

import csv
import json
import struct

import numpy as np
import pytest

from _plan_outputs import screw_with_head, torso
from spineplan.export.slicer import export_slicer, write_segmentation
from spineplan.export.stl import TIP_CONE_MM, screw_triangles, write_stl
from spineplan.export.tables import COLUMNS, screw_mean_hu, write_screws_csv
from spineplan.plan.incisions import plan_incisions
from spineplan.plan.model import Plan
from spineplan.plan.rods import plan_rods
from spineplan.plan.skin import SkinSurface
from spineplan.volume import Volume

jsonschema = pytest.importorskip("jsonschema")

# Essential parts of 3D Slicer's markups schema v1.0.3, copied from
# https://github.com/Slicer/Slicer/blob/main/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json
# (types, enums and array sizes as there; titles/descriptions/defaults and plane/ROI fields left out).
_NUM3 = {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3}
_COLOR = {"type": "array", "items": {"type": "number", "minimum": 0.0, "maximum": 1.0}, "minItems": 3, "maxItems": 3}
MARKUPS_SCHEMA_V103 = {
    "$schema": "http://json-schema.org/draft-07/schema",
    "type": "object",
    "required": ["@schema", "markups"],
    "additionalProperties": True,
    "properties": {
        "@schema": {"type": "string"},
        "markups": {"type": "array", "items": {"anyOf": [{
            "type": "object", "required": ["type"], "additionalProperties": True,
            "properties": {
                "type": {"type": "string", "enum": ["Fiducial", "Line", "Angle", "Curve", "ClosedCurve", "Plane", "ROI"]},
                "name": {"type": "string"},
                "coordinateSystem": {"type": "string", "enum": ["LPS", "RAS"]},
                "coordinateUnits": {"anyOf": [{"type": "string", "enum": ["mm", "um"]},
                                              {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 3}]},
                "locked": {"type": "boolean"},
                "fixedNumberOfControlPoints": {"type": "boolean"},
                "labelFormat": {"type": "string"},
                "controlPoints": {"type": "array", "items": {"anyOf": [{
                    "type": "object", "additionalProperties": True,
                    "properties": {
                        "id": {"type": "string"}, "label": {"type": "string"}, "description": {"type": "string"},
                        "associatedNodeID": {"type": "string"}, "position": _NUM3,
                        "orientation": {"type": "array", "items": {"type": "number"}, "minItems": 9, "maxItems": 9},
                        "selected": {"type": "boolean"}, "locked": {"type": "boolean"}, "visibility": {"type": "boolean"},
                        "positionStatus": {"type": "string", "enum": ["undefined", "preview", "defined"]}}}]}},
                "display": {"type": "object", "additionalProperties": True, "properties": {
                    "visibility": {"type": "boolean"}, "opacity": {"type": "number", "minimum": 0.0, "maximum": 1.0},
                    "color": _COLOR, "selectedColor": _COLOR, "activeColor": _COLOR,
                    "propertiesLabelVisibility": {"type": "boolean"}, "pointLabelsVisibility": {"type": "boolean"},
                    "textScale": {"type": "number", "minimum": 0.0},
                    "glyphType": {"type": "string", "enum": ["Vertex2D", "Dash2D", "Cross2D", "ThickCross2D", "Triangle2D",
                                                             "Square2D", "Circle2D", "Diamond2D", "Arrow2D", "ThickArrow2D",
                                                             "HookedArrow2D", "StarBurst2D", "Sphere3D", "Diamond3D"]},
                    "glyphScale": {"type": "number", "minimum": 0.0}, "glyphSize": {"type": "number", "minimum": 0.0},
                    "useGlyphScale": {"type": "boolean"}}},
            }}]}},
    },
}


def read_stl(path):
    """Parse a binary STL (independent of spineplan.export.stl): header, triangles (n, 3, 3)."""
    data = path.read_bytes()
    header = data[:80]
    (n,) = struct.unpack("<I", data[80:84])
    assert len(data) == 84 + 50 * n
    tris = np.empty((n, 3, 3))
    normals = np.empty((n, 3))
    for i in range(n):
        vals = struct.unpack("<12fH", data[84 + 50 * i: 84 + 50 * (i + 1)])
        normals[i] = vals[:3]
        tris[i] = np.reshape(vals[3:12], (3, 3))
    return header, tris, normals


@pytest.fixture(scope="module")
def case():
    ct = torso()
    skin = SkinSurface(ct)
    plan = Plan()
    for lv, z in (("L3", 35.0), ("L4", 0.0), ("L5", -35.0)):
        for side, x, dx in (("left", 22.0, -0.25), ("right", -22.0, 0.25)):
            plan.screws.append(screw_with_head([x, 35.0, z], [dx, -1.0, -0.05], level=lv, side=side))
    plan_rods(plan, skin=skin)
    plan_incisions(plan, skin)
    labels = np.zeros(ct.shape, np.uint8)
    labels[40:80, 25:55, 10:30] = 24  # L5
    labels[40:80, 25:55, 30:50] = 23  # L4
    return ct, plan, ct.with_array(labels, modality="labels")


def test_markups_validate_against_slicer_schema(case, tmp_path):
    _, plan, labels = case
    files = export_slicer(plan, tmp_path / "slicer", labels=labels)
    assert len(files["markups"]) == 6 + 2 + len(plan.incisions) + 1  # + skin entries
    validator = jsonschema.Draft7Validator(MARKUPS_SCHEMA_V103)
    for f in files["markups"]:
        doc = json.loads(f.read_text())
        errors = list(validator.iter_errors(doc))
        assert not errors, (f.name, errors[0].message if errors else "")
        assert doc["markups"][0]["coordinateSystem"] == "LPS"
    doc = json.loads((tmp_path / "slicer" / "screw_L4_left.mrk.json").read_text())
    m = doc["markups"][0]
    s = plan.screw("L4", "left")
    assert m["type"] == "Line" and m["name"] == "L4 left 6.5x45"
    assert np.allclose(m["controlPoints"][0]["position"], s.entry, atol=1e-3)
    assert np.allclose(m["controlPoints"][1]["position"], s.tip, atol=1e-3)
    fid = json.loads((tmp_path / "slicer" / "skin_entries.mrk.json").read_text())["markups"][0]
    assert fid["type"] == "Fiducial" and len(fid["controlPoints"]) == 6
    assert np.allclose(fid["controlPoints"][0]["position"], plan.screws[0].extra["skin_entry"], atol=1e-3)
    rod = json.loads((tmp_path / "slicer" / "rod_left.mrk.json").read_text())["markups"][0]
    assert rod["type"] == "Curve" and len(rod["controlPoints"]) == len(plan.rods[0].points)
    # a broken document does fail the validator (the test can fail)
    doc["markups"][0]["coordinateSystem"] = "XYZ"
    assert list(validator.iter_errors(doc))


def test_screw_stl_has_true_length_and_diameter(tmp_path):
    entry, d = np.array([10.0, 20.0, 30.0]), np.array([0.3, -1.0, 0.2])
    d /= np.linalg.norm(d)
    tip = entry + 45.0 * d
    p = write_stl(tmp_path / "s.stl", screw_triangles(entry, tip, 6.5), "spineplan screw L4 left 6.5x45")
    header, tris, normals = read_stl(p)
    assert b"SPACE=LPS" in header
    v = tris.reshape(-1, 3)
    # in the screw's own frame: length along the axis and the radial extent
    along = (v - entry) @ d
    radial = np.linalg.norm((v - entry) - np.outer(along, d), axis=1)
    assert along.min() == pytest.approx(0.0, abs=1e-4) and along.max() == pytest.approx(45.0, abs=1e-4)
    assert radial.max() == pytest.approx(3.25, abs=1e-4)
    # the cone: the radius at the tip is zero and full 4 mm before it
    assert radial[np.isclose(along, 45.0, atol=1e-3)].max() < 1e-3
    assert radial[np.isclose(along, 45.0 - TIP_CONE_MM, atol=1e-3)].min() == pytest.approx(3.25, abs=1e-4)
    # closed and outward: the signed volume (divergence theorem) is the cylinder + cone volume,
    # up to the 32-gon's area factor
    vol = np.einsum("ij,ij->i", tris[:, 0], np.cross(tris[:, 1], tris[:, 2])).sum() / 6
    poly = 32 / (2 * np.pi) * np.sin(2 * np.pi / 32)
    expect = poly * np.pi * 3.25 ** 2 * (45.0 - TIP_CONE_MM + TIP_CONE_MM / 3)
    assert vol == pytest.approx(expect, rel=1e-3)
    # stored normals agree with the winding
    n2 = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    assert np.all(np.einsum("ij,ij->i", n2, normals) > 0)


def test_slicer_folder_stl_files_read_back(case, tmp_path):
    _, plan, _ = case
    export_slicer(plan, tmp_path)
    for s in plan.screws:
        header, tris, _ = read_stl(tmp_path / f"screw_{s.level}_{s.side}.stl")
        assert b"SPACE=LPS" in header and s.label.encode() in header
        v = tris.reshape(-1, 3)
        ax = s.direction()
        along = (v - np.asarray(s.entry)) @ ax
        assert along.max() - along.min() == pytest.approx(s.length_mm, abs=1e-3)
    header, tris, _ = read_stl(tmp_path / "rod_left.stl")
    v = tris.reshape(-1, 3)
    pts = np.asarray(plan.rods[0].points)
    dist = np.min(np.linalg.norm(v[:, None, :] - pts[None], axis=2), axis=1)
    assert dist.max() == pytest.approx(2.75, abs=0.05)  # 5.5 mm rod


def test_seg_nrrd_reads_back_with_names(case, tmp_path):
    import SimpleITK as sitk

    ct, _, labels = case
    # a rotated, shifted grid so that origin/direction really matter
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([0.8, 0.9, 2.5])
    aff[:3, 3] = [12.0, -40.0, 300.0]
    lab = Volume(np.asarray(labels.array), aff, modality="labels")
    p = tmp_path / "vertebrae.seg.nrrd"
    names = write_segmentation(lab, p)
    assert names == {23: "L4", 24: "L5"}
    img = sitk.ReadImage(str(p))
    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    assert np.array_equal(arr, lab.array)
    assert np.allclose(img.GetOrigin(), aff[:3, 3])
    assert np.allclose(np.reshape(img.GetDirection(), (3, 3)), rot)
    assert np.allclose(img.GetSpacing(), [0.8, 0.9, 2.5])
    keys = {k: img.GetMetaData(k) for k in img.GetMetaDataKeys()}
    seg = {keys[f"Segment{i}_LabelValue"]: keys[f"Segment{i}_Name"] for i in range(2)}
    assert seg == {"23": "L4", "24": "L5"}
    assert keys["Segmentation_MasterRepresentation"] == "Binary labelmap"
    i = [k for k in range(2) if keys[f"Segment{k}_Name"] == "L4"][0]
    assert [int(v) for v in keys[f"Segment{i}_Extent"].split()] == [40, 79, 25, 54, 30, 49]
    assert len(keys[f"Segment{i}_Color"].split()) == 3
    # the header says the space is LPS (what Slicer uses to place it)
    head = p.read_bytes()[:2000].decode("latin-1")
    assert "space: left-posterior-superior" in head


def test_screws_csv(case, tmp_path):
    ct, plan, _ = case
    write_screws_csv(plan, tmp_path / "screws.csv", ct=ct)
    lines = (tmp_path / "screws.csv").read_text().splitlines()
    assert lines[0].startswith("#") and "LPS" in lines[0] and "not a certified medical device" in lines[1]
    rows = list(csv.DictReader(lines[2:]))
    assert tuple(rows[0].keys()) == COLUMNS
    assert len(rows) == 6
    r = rows[0]
    s = plan.screws[0]
    assert (r["level"], r["side"], r["size"], r["grade"]) == (s.level, s.side, "6.5x45", "A")
    assert [float(r[f"entry_{c}"]) for c in "xyz"] == pytest.approx(s.entry, abs=0.01)
    assert [float(r[f"skin_entry_{c}"]) for c in "xyz"] == pytest.approx(s.extra["skin_entry"], abs=0.01)
    # the screws sit in the 400 HU block except where they cross muscle (40 HU) behind it
    assert 40 < float(r["mean_hu"]) <= 400


def test_screws_csv_states_the_diameter_against_the_isthmus(tmp_path):
    """The surgeon reads each screw's size against its pedicle: the isthmus width the planner
    used and the diameter as a percentage of it (the 80 % rule)."""
    plan = Plan()
    plan.screws.append(screw_with_head([22.0, 35.0, 0.0], [-0.25, -1.0, -0.05], level="L4", side="left"))
    plan.screws.append(screw_with_head([-22.0, 35.0, 0.0], [0.25, -1.0, -0.05], level="L4", side="right"))
    plan.screws[0].extra["isthmus_width_mm"] = 8.6
    plan.screws[0].extra["size_limited_by"] = "pedicle margin 12 mm from entry"
    plan.screws[0].extra["length_limited_by"] = "tip clearance (4 mm from the anterior cortex)"
    rows = list(csv.DictReader(write_screws_csv_lines(plan, tmp_path)))
    d = float(rows[0]["diameter_mm"])
    assert float(rows[0]["isthmus_width_mm"]) == pytest.approx(8.6)
    assert float(rows[0]["diameter_pct_of_isthmus"]) == pytest.approx(100 * d / 8.6, abs=0.5)
    # no width known (no plan extra, no spine): empty, not a made-up number
    assert rows[1]["isthmus_width_mm"] == "" and rows[1]["diameter_pct_of_isthmus"] == ""
    # what stops the next size, as the planner states it; empty for a screw it did not plan
    assert rows[0]["size_limited_by"] == "pedicle margin 12 mm from entry"
    assert rows[0]["length_limited_by"] == "tip clearance (4 mm from the anterior cortex)"
    assert rows[1]["size_limited_by"] == "" and rows[1]["length_limited_by"] == ""


def write_screws_csv_lines(plan, tmp_path):
    write_screws_csv(plan, tmp_path / "screws.csv")
    return [ln for ln in (tmp_path / "screws.csv").read_text().splitlines() if not ln.startswith("#")]


def test_mean_hu_is_the_volume_average():
    # a CT whose HU equals the distance along x: the mean over a screw along x is its mid-point x
    shape = (80, 40, 40)
    x = np.arange(shape[0], dtype=np.float32)[:, None, None] * np.ones(shape, np.float32)
    ct = Volume(x, np.eye(4))
    s = screw_with_head([10.0, 20.0, 20.0], [1.0, 0.0, 0.0], length=40.0, height=0.0)
    assert screw_mean_hu(ct, s) == pytest.approx(30.0, abs=0.05)


def test_screw_picture(case, tmp_path):
    from PIL import Image

    from spineplan.report.screw_figures import reformat, screw_figure, slice_planes

    ct, plan, _ = case
    s = plan.screw("L4", "left")
    p = screw_figure(ct, s, tmp_path / "L4_left.png")
    im = Image.open(p)
    assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 300
    # the oblique planes contain the screw axis and are anatomically oriented
    planes = slice_planes(s)
    for centre, h, v in planes.values():
        d = s.direction()
        n = np.cross(h, v)
        assert abs(n @ d) < 1e-9 and abs(h @ v) < 1e-9
    _, h, v = planes["axial"]
    assert h[0] > 0.9 and v[1] < -0.5  # patient left to the right, anterior up
    _, h, v = planes["sagittal"]
    assert h[1] > 0.5 and v[2] > 0.9  # posterior to the right, superior up
    # the reformat samples the CT where it says: the bone block (400 HU) at the screw's middle
    centre, h, v = planes["axial"]
    img, c = reformat(ct, centre, h, v, fov_mm=20.0, pixel_mm=1.0)
    assert img[10, 10] == pytest.approx(float(ct.sample(np.asarray(centre)[None])[0]), abs=1e-3)


def test_mean_hu_weights_the_cross_section_by_area():
    # HU = squared distance from the line y = z = 20.5 (between voxel centres); over a disk of
    # radius R the area-weighted mean of r^2 is R^2 / 2 (trilinear interpolation adds <= 0.5)
    shape = (60, 41, 41)
    j, k = np.meshgrid(np.arange(41.0), np.arange(41.0), indexing="ij")
    hu = np.broadcast_to(((j - 20.5) ** 2 + (k - 20.5) ** 2)[None], shape).astype(np.float32)
    ct = Volume(np.ascontiguousarray(hu), np.eye(4))
    s = screw_with_head([10.0, 20.5, 20.5], [1.0, 0.0, 0.0], length=40.0, height=0.0, diameter=8.0)
    assert screw_mean_hu(ct, s, step_mm=0.25) == pytest.approx(16.0 / 2, abs=0.6)
