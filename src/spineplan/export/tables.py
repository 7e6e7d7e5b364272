"""The screw table (``screws.csv``): one row per screw, coordinates in patient LPS mm."""

from __future__ import annotations

import csv
import io

import numpy as np

from spineplan import DISCLAIMER
from spineplan._atomic import write_text
from spineplan.plan.model import Plan, Screw
from spineplan.typing import TypePath

COLUMNS = ("level", "side", "size", "diameter_mm", "length_mm",
           "entry_x", "entry_y", "entry_z", "tip_x", "tip_y", "tip_z",
           "medial_angle_deg", "cranial_angle_deg", "min_margin_mm", "grade", "mean_hu",
           "skin_entry_x", "skin_entry_y", "skin_entry_z", "skin_depth_mm",
           "isthmus_width_mm", "diameter_pct_of_isthmus", "size_limited_by", "length_limited_by")


def screw_mean_hu(ct, screw: Screw, *, step_mm: float = 0.5) -> float:
    """Mean HU inside the screw's cylinder (trilinear samples on a 0.5 mm grid)."""
    e = np.asarray(screw.entry, float)
    d = screw.direction()
    a = np.cross(d, [1.0, 0, 0])
    if np.linalg.norm(a) < 0.1:
        a = np.cross(d, [0, 1.0, 0])
    a /= np.linalg.norm(a)
    b = np.cross(d, a)
    r = screw.diameter_mm / 2
    t = np.arange(step_mm / 2, screw.length_mm, step_mm)
    g = np.arange(-r + step_mm / 2, r, step_mm)
    gu, gv = np.meshgrid(g, g)
    keep = gu ** 2 + gv ** 2 <= r * r  # uniform grid over the cross-section: area-weighted
    disk = gu[keep][:, None] * a + gv[keep][:, None] * b
    pts = e + t[:, None, None] * d + disk[None]
    return float(np.mean(ct.sample(pts.reshape(-1, 3), order=1)))


def _angles(screw: Screw, spine):
    if screw.medial_angle_deg is not None and screw.cranial_angle_deg is not None:
        return screw.medial_angle_deg, screw.cranial_angle_deg
    if spine is not None and screw.level in spine:
        return spine[screw.level].frame.angles_of(screw.direction(), screw.side)
    return screw.medial_angle_deg, screw.cranial_angle_deg


def _isthmus(screw: Screw, spine):
    """The pedicle isthmus width the screw was sized against (the plan's, else the spine's)."""
    w = screw.extra.get("isthmus_width_mm")
    if w is None and spine is not None and screw.level in spine:
        p = spine[screw.level].pedicles.get(screw.side)
        w = None if p is None else p.isthmus_width_mm
    return None if w is None or not np.isfinite(w) or w <= 0 else float(w)


def _f(x, nd=2):
    return "" if x is None else f"{float(x):.{nd}f}"


def screws_table(plan: Plan, *, ct=None, spine=None) -> list[dict]:
    """Rows of the screw table. Mean HU is the screw's ``extra['mean_hu']`` or, given the CT,
    measured over the screw's volume; angles come from the plan or, given the spine, the frame."""
    rows = []
    for s in plan.screws:
        med, cra = _angles(s, spine)
        hu = s.extra.get("mean_hu")
        if hu is None and ct is not None:
            hu = screw_mean_hu(ct, s)
        skin = s.extra.get("skin_entry") or [None, None, None]
        width = _isthmus(s, spine)
        rows.append({"level": s.level, "side": s.side, "size": f"{s.diameter_mm:g}x{s.length_mm:g}",
                     "diameter_mm": f"{s.diameter_mm:g}", "length_mm": f"{s.length_mm:g}",
                     **{f"entry_{c}": _f(v) for c, v in zip("xyz", s.entry)},
                     **{f"tip_{c}": _f(v) for c, v in zip("xyz", s.tip)},
                     "medial_angle_deg": _f(med, 1), "cranial_angle_deg": _f(cra, 1),
                     "min_margin_mm": _f(s.min_margin_mm), "grade": s.grade or "",
                     "mean_hu": _f(hu, 0), **{f"skin_entry_{c}": _f(v) for c, v in zip("xyz", skin)},
                     "skin_depth_mm": _f(s.extra.get("skin_depth_mm"), 1),
                     "isthmus_width_mm": _f(width, 1),
                     "diameter_pct_of_isthmus": "" if width is None else f"{100 * s.diameter_mm / width:.0f}",
                     # why not the next catalogue size (the planner's; empty for screws from elsewhere)
                     "size_limited_by": s.extra.get("size_limited_by") or "",
                     "length_limited_by": s.extra.get("length_limited_by") or ""})
    return rows


def write_screws_csv(plan: Plan, path: TypePath, *, ct=None, spine=None) -> list[dict]:
    """Write ``screws.csv`` atomically (comment lines first: frame, units, disclaimer)."""
    rows = screws_table(plan, ct=ct, spine=spine)
    buf = io.StringIO()
    buf.write("# spineplan screw table; coordinates: patient LPS mm (as in plan.json); angles in the "
              "vertebra frame (medial from the mid-sagittal plane, cranial from the superior endplate)\n")
    buf.write(f"# {DISCLAIMER}\n")
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())
    return rows
