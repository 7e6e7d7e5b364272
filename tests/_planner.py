"""Test helpers for the screw planner: a Spine built from phantom truth (frames and pedicles
from truth.json), so planner tests do not depend on the anatomy measurements."""

from __future__ import annotations

import numpy as np

from spineplan.anatomy.model import Pedicle, Spine, Vertebra, VertebraFrame


def spine_from_truth(ph) -> Spine:
    """A Spine whose frames, pedicles and endplates are the phantom's ground truth."""
    verts = []
    for name, t in ph.truth["vertebrae"].items():
        if not np.any(np.asarray(ph.labels.array) == t["label"]):
            continue
        ax = t["axes"]
        frame = VertebraFrame(t["body_centroid"], np.array([ax["x"], ax["y"], ax["z"]]))
        peds = {}
        for side, p in (t.get("pedicles") or {}).items():
            peds[side] = Pedicle(side=side, isthmus_center=p["isthmus_center"], axis=p["axis"],
                                 isthmus_width_mm=p["isthmus_width_mm"], isthmus_height_mm=p["isthmus_height_mm"],
                                 transverse_angle_deg=p.get("transverse_angle_deg", float("nan")),
                                 sagittal_angle_deg=p.get("sagittal_angle_deg", float("nan")))
        ends = {k: t[f"{k}_endplate"] for k in ("superior", "inferior") if f"{k}_endplate" in t}
        verts.append(Vertebra(name=name, label=int(t["label"]), frame=frame, complete=bool(t.get("complete", True)),
                              pedicles=peds, endplates=ends))
    from spineplan.levels import level_index

    verts.sort(key=lambda v: level_index(v.name))
    return Spine(vertebrae=verts, labels=ph.labels, naming_confidence=1.0, naming_method="truth")


def assert_size_limit_consistent(s, catalogue_max_d=7.5, catalogue_max_l=60.0):
    """The screw's stated reason for its size (``size_limited_by``, ``size_limit``) agrees with its
    numbers: a screw at 80 % of the isthmus could not be 0.5 mm thicker under that rule; a margin
    limit lies after the 5 mm entry zone and within reach of the next size; catalogue limits are
    the catalogue's largest sizes."""
    lim = s.extra["size_limit"]
    assert s.extra["size_limited_by"] == lim["diameter"]["text"] and s.extra["length_limited_by"] == lim["length"]["text"]
    rd, rl = lim["diameter"]["rule"], lim["length"]["rule"]
    if rd == "isthmus-80":  # the width in extra is rounded to 0.01 mm (0.005 mm of slack)
        assert s.diameter_mm + 0.5 > 0.8 * (s.extra["isthmus_width_mm"] - 0.005)
    if rd == "catalogue-max":
        assert s.diameter_mm == catalogue_max_d
    if rd in ("pedicle-margin", "body-margin") and lim["diameter"]["at_mm"] is not None:
        assert 5.0 - 1e-6 <= lim["diameter"]["at_mm"] <= catalogue_max_l + 5.0
    if rl == "catalogue-max":
        assert s.length_mm == catalogue_max_l
    if rl in ("pedicle-margin", "body-margin", "tip-clearance"):
        # the next length (+5 mm) would reach past where the axis stops fitting
        assert s.length_mm <= lim["length"]["at_mm"] < s.length_mm + 5.0 + 0.5 + 1e-6, (s.label, lim)
