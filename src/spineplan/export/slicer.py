"""A 3D Slicer folder for a plan: markups, STL models and the vertebra segmentation.

Contents of ``slicer/`` (everything in patient LPS mm, so it lands on the original CT):

- ``screw_<level>_<side>.mrk.json``: one markups **Line** per screw named like
  ``L4 left 6.5x45``, control points ``entry`` and ``tip``;
- ``screw_<level>_<side>.stl``: the screw at its true diameter and length (header ``SPACE=LPS``);
- ``rod_<side>.mrk.json`` (markups **Curve** through the rod points) and ``rod_<side>.stl``;
- ``incision_<n>_<side>.mrk.json``: markups **Line** from the incision's start to its end;
- ``skin_entries.mrk.json``: markups **Fiducial** list of the trajectories' skin entry points;
- ``vertebrae.seg.nrrd``: the VerSe label map as a Slicer segmentation (one segment per
  vertebra, named by level).

The markups files follow Slicer's markups JSON schema v1.0.3
(https://github.com/Slicer/Slicer/blob/main/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json);
the ``.seg.nrrd`` keys follow ``vtkMRMLSegmentationStorageNode`` (``SegmentN_ID``, ``_Name``,
``_Color``, ``_LabelValue``, ``_Layer``, ``_Extent``, ``_Tags``; ``Segmentation_*``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from spineplan import DISCLAIMER
from spineplan._atomic import atomic_path, write_text
from spineplan.levels import level_from_verse
from spineplan.plan.model import Plan
from spineplan.typing import TypePath

#: Schema id Slicer itself writes into .mrk.json files (vtkMRMLMarkupsJsonStorageNode keeps the
#: historical "master" URL for compatibility with Slicer < 5.1).
MARKUPS_SCHEMA_ID = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
                     "Resources/Schema/markups-schema-v1.0.3.json#")

SCREW_COLOR = (0.2, 0.8, 1.0)
ROD_COLOR = (0.9, 0.7, 0.1)
INCISION_COLOR = (1.0, 0.2, 0.2)


def _cp(label: str, position, description: str = "") -> dict:
    return {"id": label, "label": label, "description": description, "associatedNodeID": "",
            "position": [round(float(v), 4) for v in position],
            "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
            "selected": True, "locked": True, "visibility": True, "positionStatus": "defined"}


def markup(kind: str, name: str, points, labels=None, *, color=SCREW_COLOR, description: str = "") -> dict:
    """One markups node (``kind`` is "Line", "Curve" or "Fiducial") in LPS mm."""
    pts = [list(map(float, p)) for p in points]
    labels = labels or [f"{name}-{i + 1}" for i in range(len(pts))]
    return {"type": kind, "name": name, "coordinateSystem": "LPS", "coordinateUnits": "mm", "locked": True,
            "fixedNumberOfControlPoints": kind == "Line", "labelFormat": "%N-%d",
            "lastUsedControlPointNumber": len(pts), "description": description,
            "controlPoints": [_cp(lab, p) for lab, p in zip(labels, pts)], "measurements": [],
            "display": {"visibility": True, "opacity": 1.0, "color": list(color), "selectedColor": list(color),
                        "activeColor": [0.4, 1.0, 0.0], "propertiesLabelVisibility": True,
                        "pointLabelsVisibility": False, "textScale": 3.0, "glyphType": "Sphere3D",
                        "glyphScale": 1.0, "glyphSize": 3.0, "useGlyphScale": True, "lineThickness": 0.2}}


def markups_document(*markups: dict) -> dict:
    return {"@schema": MARKUPS_SCHEMA_ID, "markups": list(markups)}


def write_markups(path: TypePath, *markups: dict) -> Path:
    return write_text(path, json.dumps(markups_document(*markups), indent=2) + "\n")


def _color(i: int) -> tuple[float, float, float]:
    import colorsys

    h = (i * 0.61803398875) % 1.0
    return colorsys.hsv_to_rgb(h, 0.55, 0.95)


def write_segmentation(labels, path: TypePath, names: dict[int, str] | None = None) -> dict[int, str]:
    """Write a label map (``Volume`` with integer codes, VerSe by default) as a Slicer ``.seg.nrrd``.

    One segment per non-zero label value, named by ``names`` (default: level names from the
    VerSe code). Geometry (origin, spacing, direction) is the label volume's, in LPS.
    Returns {label value: segment name}.
    """
    import SimpleITK as sitk

    arr = np.asarray(labels.array)
    values = [int(v) for v in np.unique(arr) if v != 0]
    if names is None:
        names = {}
        for v in values:
            try:
                names[v] = level_from_verse(v)
            except KeyError:
                names[v] = f"label {v}"
    dtype = np.uint8 if max(values, default=0) < 256 else np.uint16
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.astype(dtype).transpose(2, 1, 0)))
    img.SetOrigin(tuple(float(v) for v in labels.origin))
    img.SetSpacing(tuple(float(v) for v in labels.spacing))
    img.SetDirection(tuple(float(v) for v in labels.direction.ravel()))
    from scipy import ndimage

    boxes = ndimage.find_objects(arr.astype(np.int32))
    md = {"Segmentation_MasterRepresentation": "Binary labelmap",
          "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
          "Segmentation_ReferenceImageExtentOffset": "0 0 0",
          "Segmentation_ConversionParameters": "",
          "spineplan_note": DISCLAIMER}
    out = {}
    for n, v in enumerate(values):
        sl = boxes[v - 1]
        ext = " ".join(f"{s.start} {s.stop - 1}" for s in sl)
        name = names.get(v, f"label {v}")
        out[v] = name
        r, g, b = _color(v)
        md.update({f"Segment{n}_ID": f"Segment_{v}", f"Segment{n}_Name": name, f"Segment{n}_NameAutoGenerated": "0",
                   f"Segment{n}_LabelValue": str(v), f"Segment{n}_Layer": "0",
                   f"Segment{n}_Color": f"{r:.4f} {g:.4f} {b:.4f}", f"Segment{n}_ColorAutoGenerated": "0",
                   f"Segment{n}_Extent": ext, f"Segment{n}_Tags": "|"})
    for k, val in md.items():
        img.SetMetaData(k, val)
    with atomic_path(path, suffix=".seg.nrrd") as tmp:
        sitk.WriteImage(img, str(tmp), True)
    return out


def export_slicer(plan: Plan, out_dir: TypePath, *, labels=None) -> dict[str, list[Path]]:
    """Write the Slicer folder for ``plan`` into ``out_dir``; returns the files by kind."""
    from spineplan.export.stl import rod_triangles, screw_triangles, write_stl
    from spineplan.plan.rods import ROD_DIAMETER_MM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[Path]] = {"markups": [], "stl": [], "segmentation": []}
    for s in plan.screws:
        stem = f"screw_{s.level}_{s.side}"
        desc = f"grade {s.grade or '?'}; min margin {s.min_margin_mm if s.min_margin_mm is not None else '?'} mm"
        m = markup("Line", s.label, [s.entry, s.tip], ["entry", "tip"], color=SCREW_COLOR, description=desc)
        files["markups"].append(write_markups(out / f"{stem}.mrk.json", m))
        files["stl"].append(write_stl(out / f"{stem}.stl", screw_triangles(s.entry, s.tip, s.diameter_mm),
                                      f"spineplan screw {s.label}"))
    for r in plan.rods:
        name = f"rod {r.side} {r.length_mm:g} mm"
        m = markup("Curve", name, r.points, color=ROD_COLOR)
        files["markups"].append(write_markups(out / f"rod_{r.side}.mrk.json", m))
        d = float(r.extra.get("diameter_mm", ROD_DIAMETER_MM))
        files["stl"].append(write_stl(out / f"rod_{r.side}.stl", rod_triangles(r.points, d), f"spineplan {name}"))
    for n, inc in enumerate(plan.incisions, 1):
        lv = "-".join(inc.extra.get("levels", [])) or str(n)
        name = f"incision {inc.side} {lv} {inc.length_mm:.0f} mm"
        m = markup("Line", name, [inc.start, inc.end], ["start", "end"], color=INCISION_COLOR)
        files["markups"].append(write_markups(out / f"incision_{n}_{inc.side}.mrk.json", m))
    skin = [(s.label, s.extra["skin_entry"]) for s in plan.screws if s.extra.get("skin_entry") is not None]
    if skin:
        m = markup("Fiducial", "skin entries", [p for _, p in skin], [f"{lab} skin" for lab, _ in skin],
                   color=INCISION_COLOR, description="screw trajectories extended to the skin")
        files["markups"].append(write_markups(out / "skin_entries.mrk.json", m))
    if labels is not None:
        p = out / "vertebrae.seg.nrrd"
        write_segmentation(labels, p)
        files["segmentation"].append(p)
    write_text(out / "README.txt", "Open these files in 3D Slicer together with the original CT (drag and drop). "
               "All coordinates are patient LPS millimetres.\n" + DISCLAIMER + "\n")
    return files
