"""Named C-arm views and the angles a radiographer sets for them.

Views (names are case-insensitive):

- ``AP``: beam anterior -> posterior through the prone patient (tube under the table), C-arm
  angles (0, 0). ``LAT``: lateral, detector on the patient's left (angular +90).
  ``OBL-L`` / ``OBL-R``: 45-degree obliques with the detector swung towards the patient's left /
  right (ipsilateral obliques: they show that side's pars and facets, the "Scotty dog").
- ``L4-AP`` (**true AP** of a level): the beam lies in the level's superior endplate plane and in
  its mid-sagittal plane, and the C-arm is centred on the superior endplate, so the endplate is
  seen edge-on (a single line) and the spinous process projects midway between the pedicles.
- ``L4-LAT`` (**true lateral**): the beam lies in the superior endplate plane and is as
  perpendicular to the mid-sagittal plane as the endplate allows (the vertebra's x axis
  projected onto the endplate plane); centred on the superior endplate.
- ``owl:L4-left`` (**owl's eye**, "down the barrel"): the beam runs along the planned screw's axis
  (entry -> tip reversed, so anterior -> posterior like AP) if the plan has that screw, else
  along the pedicle's axis, centred on the pedicle isthmus (or the screw entry).

Angles are those of :meth:`spineplan.fluoro.geometry.Pose.from_carm` for a **prone** patient:
``orbital_deg`` = cranio-caudal tilt (positive: detector towards the head), ``angular_deg`` =
lateral rotation (positive: detector towards the patient's left). A two-axis C-arm reaches any
beam direction; the image's in-plane rotation is then the C-arm's own (no digital rotation).

Isocentre: per-level views centre on the level; ``AP``/``LAT``/``OBL`` centre on the mean of the
planned screws (if a plan is given), else on the mean of the vertebral body centres (if a spine
is given), else on the spine estimated from the CT's bone (see :func:`spine_centre_from_ct`).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from spineplan.errors import InputError, PlanningError
from spineplan.fluoro.geometry import DEFAULT_SID_MM, CArm, Detector, Pose, carm_angles_of_direction

#: Oblique views' lateral rotation, degrees (the standard 45-degree lumbar oblique; e.g. Bontrager's
#: Textbook of Radiographic Positioning, 9th ed., lumbar spine oblique projections: 45 degrees).
OBLIQUE_DEG = 45.0
#: CT number above which a voxel counts as bone when locating the spine in a CT without labels
#: (cancellous bone is >= ~150 HU in adults; Pickhardt et al., Ann Intern Med 2013).
BONE_HU = 200.0
#: Half-width (mm) of the midline band used to find the spine's antero-posterior position.
MIDLINE_BAND_MM = 20.0

_LEVEL_VIEW = re.compile(r"^([CTLS]\d{1,2})-(AP|LAT)$")
_OWL_VIEW = re.compile(r"^OWL:([CTLS]\d{1,2})-(LEFT|RIGHT)$")
GENERIC_VIEWS = ("AP", "LAT", "OBL-L", "OBL-R")


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64).reshape(3)
    n = np.linalg.norm(v)
    if not np.isfinite(n) or n < 1e-9:
        raise InputError(f"Cannot make a direction from {v.tolist()} (zero or not finite).")
    return v / n


def describe_angles(orbital_deg: float, angular_deg: float) -> str:
    """Plain words for a radiographer, e.g. 'tilt 12 deg caudal, rotate 5 deg to the patient's left'."""
    parts = []
    if abs(orbital_deg) < 0.5:
        parts.append("no cranio-caudal tilt")
    else:
        parts.append(f"tilt {abs(orbital_deg):.0f} deg {'cranial' if orbital_deg > 0 else 'caudal'} "
                     f"(detector towards the {'head' if orbital_deg > 0 else 'feet'})")
    if abs(angular_deg) < 0.5:
        parts.append("no lateral rotation")
    else:
        parts.append(f"rotate {abs(angular_deg):.0f} deg (detector towards the patient's "
                     f"{'left' if angular_deg > 0 else 'right'})")
    return ", ".join(parts)


def _view_info(view: str, pose: Pose, iso: np.ndarray, sid: float, what: str, vertebra=None) -> dict[str, Any]:
    orb, ang = carm_angles_of_direction(pose.beam_direction)
    extra = {}
    if vertebra is not None:
        # in-plane angle of the vertebra's left-right axis on the image: rotating the monitor
        # image by -image_roll_deg makes the endplates horizontal
        d = pose.rotation @ vertebra.frame.axes[0]
        if np.hypot(d[0], d[1]) > 0.3:
            roll = float(np.degrees(np.arctan2(d[1], d[0])))
            roll = (roll + 90.0) % 180.0 - 90.0
            extra["image_roll_deg"] = round(roll, 2)
    return {
        "view": view,
        "orbital_deg": round(orb, 2),
        "angular_deg": round(ang, 2),
        "isocentre_lps": [round(float(x), 2) for x in iso],
        "beam_direction_lps": [round(float(x), 5) for x in pose.beam_direction],
        "sid_mm": float(sid),
        "patient": "prone",
        "description": f"{what}: {describe_angles(orb, ang)}.",
        **extra,
    }


def _pose_for_beam(iso, beam, sid) -> Pose:
    orb, ang = carm_angles_of_direction(beam)
    return Pose.from_carm(iso, orb, ang, sid_mm=sid)


def spine_centre_from_ct(ct) -> np.ndarray:
    """A point on the spine estimated from bone in the CT (no labels needed).

    Left-right: the median position of bone (spine, sternum and the symmetric ribs are centred on
    the midline). Antero-posterior: within :data:`MIDLINE_BAND_MM` of that midline, the spine is
    a thick column of bone present in (nearly) every axial slice, unlike the sternum or the
    heart and vessels with contrast (partial coverage) and the CT table (a thin plate): the
    longest contiguous run of 5 mm antero-posterior bins whose bone appears in >= 80 % of the
    slices is taken, and the median of its bone is used. Cranio-caudal: the middle of the scan."""
    arr = np.asarray(ct.array)
    step = max(1, int(round(2.0 / max(float(ct.spacing.min()), 1e-3))))  # ~2 mm sampling
    sub = arr[::step, ::step, ::step]
    idx = np.argwhere(sub > BONE_HU) * step
    lo, hi = ct.bounds()
    if len(idx) < 50:
        return (lo + hi) / 2.0
    pts = ct.index_to_world(idx)
    x_mid = float(np.median(pts[:, 0]))
    band = pts[np.abs(pts[:, 0] - x_mid) < MIDLINE_BAND_MM]
    y = float(np.median(band[:, 1])) if len(band) else float(np.median(pts[:, 1]))
    if len(band) > 20:
        zs = np.round(band[:, 2] / 2.0).astype(int)  # 2 mm slabs
        ys = np.floor(band[:, 1] / 5.0).astype(int)  # 5 mm bins
        n_slabs = len(np.unique(zs))
        pairs = np.unique(np.stack([ys, zs], axis=1), axis=0)
        bins, counts = np.unique(pairs[:, 0], return_counts=True)
        good = set(bins[counts >= 0.8 * n_slabs].tolist())
        best: list[int] = []
        for b0 in sorted(good):
            if b0 - 1 in good:
                continue
            run = [b0]
            while run[-1] + 1 in good:
                run.append(run[-1] + 1)
            if len(run) > len(best):
                best = run
        sel = np.isin(ys, best)
        if sel.sum() > 10:
            y = float(np.median(band[sel, 1]))
    return np.array([x_mid, y, (lo[2] + hi[2]) / 2.0])


def _plan_screws(plan) -> list:
    if plan is None:
        return []
    return list(plan.get("screws", []) if isinstance(plan, dict) else getattr(plan, "screws", []))


def _get(o, k, default=None):
    return o.get(k, default) if isinstance(o, dict) else getattr(o, k, default)


def _find_screw(plan, level: str, side: str):
    for s in _plan_screws(plan):
        if _get(s, "level") == level and _get(s, "side") == side:
            return s
    return None


def _vertebra(spine, level: str):
    if spine is None:
        raise PlanningError(f"The view of {level} needs the vertebrae: give a label map (--labels) or a spine.")
    if level not in spine:
        raise PlanningError(f"{level} is not among the vertebrae found ({', '.join(spine.names)}); "
                            "choose a level in the scan.")
    return spine[level]


def _superior_endplate(v) -> tuple[np.ndarray, np.ndarray]:
    """(point, unit normal pointing superior) of the superior endplate, from the measured
    endplate if present, else the frame's z axis through the frame origin shifted up by half
    the middle body height (or the origin if no height was measured)."""
    z = v.frame.axes[2]
    ep = (v.endplates or {}).get("superior")
    if ep and ep.get("normal") is not None:
        n = _unit(ep["normal"])
        if n @ z < 0:
            n = -n
        p = np.asarray(ep.get("point", v.frame.origin), dtype=np.float64)
        return p, n
    h = float((v.measurements or {}).get("middle_height_mm", 0.0) or 0.0)
    return v.frame.origin + 0.5 * h * z, z


def _true_views(v) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"ap": (iso, beam), "lat": (iso, beam)} for one vertebra."""
    x = v.frame.axes[0]
    p_ep, n = _superior_endplate(v)
    # isocentre: on the endplate plane and in the mid-sagittal plane (through the frame origin)
    w = n - (n @ x) * x
    w = w / np.linalg.norm(w)
    lam = float((p_ep - v.frame.origin) @ n) / float(w @ n)
    iso = v.frame.origin + lam * w
    ap = _unit(np.cross(n, x))  # in both planes; n x x ~ y (posterior): anterior -> posterior
    if ap @ v.frame.axes[1] < 0:
        ap = -ap
    lat = _unit(x - (x @ n) * n)  # towards the patient's left: detector on the left
    return {"ap": (iso, ap), "lat": (iso, lat)}


def _owl(v, side: str, plan) -> tuple[np.ndarray, np.ndarray, str]:
    screw = _find_screw(plan, v.name, side)
    ped = (v.pedicles or {}).get(side)
    if screw is not None:
        entry = np.asarray(_get(screw, "entry"), float)
        tip = np.asarray(_get(screw, "tip"), float)
        beam = _unit(entry - tip)
        if ped is not None:
            c = np.asarray(ped.isthmus_center, float)
            iso = entry + ((c - entry) @ (-beam)) * (-beam)  # axis point nearest the isthmus
        else:
            iso = entry
        return iso, beam, "planned screw axis"
    if ped is None:
        raise PlanningError(f"No {side} pedicle was measured at {v.name} and the plan has no {v.name} {side} "
                            "screw: the owl's-eye view cannot be set.")
    return np.asarray(ped.isthmus_center, float), _unit(-np.asarray(ped.axis, float)), "pedicle axis"


def check_view_name(name: str) -> str:
    """The canonical form of a view name (e.g. ``"owl:L4-left"``); raises InputError if unknown."""
    key = str(name).strip().upper()
    if key in GENERIC_VIEWS:
        return key
    m = _LEVEL_VIEW.match(key)
    if m:
        return f"{m.group(1)}-{m.group(2)}"
    m = _OWL_VIEW.match(key)
    if m:
        return f"owl:{m.group(1)}-{m.group(2).lower()}"
    raise InputError(f"Unknown view {name!r}. Use AP, LAT, OBL-L, OBL-R, <level>-AP, <level>-LAT "
                     "or owl:<level>-left|right (e.g. L4-AP, owl:L4-left).")


def named_view(name: str, ct=None, spine=None, plan=None, detector: Detector | None = None,
               sid_mm: float = DEFAULT_SID_MM) -> tuple[CArm, dict[str, Any]]:
    """The C-arm for a named view and its radiographer's angles (see the module docstring).

    Returns ``(carm, info)``; ``info`` has ``orbital_deg``, ``angular_deg``, ``isocentre_lps``,
    ``beam_direction_lps``, ``sid_mm``, ``description``."""
    det = detector or Detector()
    key = str(name).strip().upper()
    if key in GENERIC_VIEWS:
        screws = _plan_screws(plan)
        if screws:
            pts = np.array([_get(s, k) for s in screws for k in ("entry", "tip")], dtype=float)
            iso = pts.mean(axis=0)
        elif spine is not None and len(spine.vertebrae):
            iso = np.mean([v.frame.origin for v in spine.vertebrae], axis=0)
        elif ct is not None:
            iso = spine_centre_from_ct(ct)
        else:
            raise InputError(f"View {name}: give a CT, a spine or a plan to centre the C-arm on.")
        angular = {"AP": 0.0, "LAT": 90.0, "OBL-L": OBLIQUE_DEG, "OBL-R": -OBLIQUE_DEG}[key]
        pose = Pose.from_carm(iso, 0.0, angular, sid_mm=sid_mm)
        what = {"AP": "AP (beam anterior to posterior, patient prone)",
                "LAT": "Lateral (detector on the patient's left)",
                "OBL-L": "Left oblique (detector towards the patient's left)",
                "OBL-R": "Right oblique (detector towards the patient's right)"}[key]
        return CArm(det, pose), _view_info(key, pose, iso, sid_mm, what)
    m = _LEVEL_VIEW.match(key)
    if m:
        level, kind = m.group(1), m.group(2)
        v = _vertebra(spine, level)
        iso, beam = _true_views(v)["ap" if kind == "AP" else "lat"]
        pose = _pose_for_beam(iso, beam, sid_mm)
        what = (f"True AP of {level} (superior endplate edge-on, spinous process centred)" if kind == "AP"
                else f"True lateral of {level} (superior endplate edge-on, pedicles superimposed)")
        return CArm(det, pose), _view_info(f"{level}-{kind}", pose, iso, sid_mm, what, v if kind == "AP" else None)
    m = _OWL_VIEW.match(key)
    if m:
        level, side = m.group(1), m.group(2).lower()
        v = _vertebra(spine, level)
        iso, beam, along = _owl(v, side, plan)
        pose = _pose_for_beam(iso, beam, sid_mm)
        return CArm(det, pose), _view_info(f"owl:{level}-{side}", pose, iso, sid_mm,
                                           f"Owl's eye of {level} {side} (beam along the {along})")
    raise InputError(f"Unknown view {name!r}. Use AP, LAT, OBL-L, OBL-R, <level>-AP, <level>-LAT "
                     "or owl:<level>-left|right (e.g. L4-AP, owl:L4-left).")


def carm_angles(spine, plan=None, levels=None) -> list[dict[str, Any]]:
    """Per level (cranial to caudal): the C-arm angles of its true AP, true lateral and the two
    owl's-eye views (``None`` where the pedicle/screw is missing).

    Each entry: ``{"level", "true_ap": {...}, "true_lateral": {...}, "owl_left": {...} | None,
    "owl_right": {...} | None, "frame_suspect": bool}`` with the ``info`` dicts of :func:`named_view`;
    ``frame_suspect``: the level's frame is out of line with a neighbour's
    (:func:`spineplan.anatomy.spine.frames_suspect`), or its endplates are wider apart than an
    unfractured body's (:func:`spineplan.anatomy.fracture.endplates_misread`), so its angles may
    be wrong."""
    from spineplan.anatomy.fracture import endplates_misread
    from spineplan.anatomy.spine import frames_suspect

    names = list(levels) if levels is not None else list(spine.names)
    suspect = frames_suspect(spine) | set(endplates_misread(spine))
    out = []
    for name in names:
        if name not in spine:
            raise PlanningError(f"{name} is not among the vertebrae found ({', '.join(spine.names)}).")
        row: dict[str, Any] = {"level": name, "frame_suspect": name in suspect}
        for key, view in (("true_ap", f"{name}-AP"), ("true_lateral", f"{name}-LAT")):
            row[key] = named_view(view, spine=spine, plan=plan)[1]
        for side in ("left", "right"):
            try:
                row[f"owl_{side}"] = named_view(f"owl:{name}-{side}", spine=spine, plan=plan)[1]
            except PlanningError:
                row[f"owl_{side}"] = None
        out.append(row)
    return out


#: Footnote of the C-arm tables for levels marked ``frame_suspect``.
SUSPECT_NOTE = ("* this level's endplates look misread (its axis is out of line with its neighbour's, or its "
                "endplates are wedged more than its heights show; see the warnings): its angles may be wrong; "
                "confirm the true AP on the first shot.")


def angles_table_text(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table of :func:`carm_angles` (orbital / angular in degrees)."""

    def cell(d):
        return "       -      " if d is None else f"{d['orbital_deg']:+6.1f} {d['angular_deg']:+6.1f} "

    head = ("level  true AP        true lateral   owl left       owl right\n"
            "       orb    ang     orb    ang     orb    ang     orb    ang")
    lines = [head]
    for r in rows:
        cells = " ".join(cell(r[k]) for k in ("true_ap", "true_lateral", "owl_left", "owl_right"))
        lines.append(f"{r['level'] + ('*' if r.get('frame_suspect') else ''):<6} {cells}")
    if any(r.get("frame_suspect") for r in rows):
        lines.append(SUSPECT_NOTE)
    lines.append("orb = orbital (cranio-caudal tilt; + detector towards the head); "
                 "ang = angular (lateral rotation; + detector towards the patient's left). Patient prone.")
    return "\n".join(lines)


def render_view(att, name: str, *, ct=None, spine=None, plan=None, size: int = 512, mode: str = "fast",
                sampling: str = "linear", enhance: float = 0.6, noise=None, rng=0, overlay: bool = True):
    """A ready-to-show picture of a named view: ``(image uint8, carm, info)``.

    ``att``: :class:`spineplan.fluoro.drr.AttenuationVolume` of the CT (convert once, reuse).
    The plan's implants are drawn in; the display window comes from the tissue-only DRR so metal
    saturates black; with ``overlay`` the vertebra names, screw axes, orientation letters, the
    view's angles and the research note are drawn on (RGB), else the image is grey (H, W)."""
    from spineplan.fluoro.drr import add_noise, metal_image, render, to_display
    from spineplan.fluoro.overlay import draw_overlay, view_title

    carm, info = named_view(name, ct, spine=spine, plan=plan, detector=Detector.square(int(size)))
    tissue = render(att, carm, mode=mode, sampling=sampling)
    li = tissue + metal_image(carm, plan, att.energy_kev) if plan is not None else tissue
    if noise:
        li = add_noise(li, noise, rng=rng)
    img = to_display(li, enhance=enhance, reference=tissue)
    if overlay:
        img = draw_overlay(img, carm, spine=spine, metal=plan, title=view_title(info),
                           centre_lps=info["isocentre_lps"])
    return img, carm, info
