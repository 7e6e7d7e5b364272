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
