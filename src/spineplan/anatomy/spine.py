"""A measured, graded :class:`~spineplan.anatomy.model.Spine` from a CT and a VerSe label map,
and its ``spine.json`` file (format ``spineplan.spine``, version 1)."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

import numpy as np

from spineplan import DISCLAIMER, __version__
from spineplan._atomic import write_text
from spineplan._progress import progress
from spineplan.anatomy.fracture import grade_fractures
from spineplan.anatomy.measure import OSTEOPOROSIS_HU, measure_vertebra, pedicles_disagree
from spineplan.anatomy.model import Spine
from spineplan.errors import LabelError, NoVertebraeError
from spineplan.levels import adjacent, level_from_verse, level_index
from spineplan.typing import TypePath
from spineplan.volume import Volume

SPINE_FORMAT = "spineplan.spine"
SPINE_VERSION = 1
#: Label maps with fewer voxels than this for a level are treated as noise, not a vertebra.
_MIN_VOXELS = 20
#: A pedicle whose isthmus width differs from the mean of the adjacent levels' pedicles by more
#: than this (mm, and fraction of that mean) is out of line with its neighbours. Adjacent
#: thoracolumbar levels differ by ~0.5-2 mm, most at L4-L5 (~4-5 mm; Zindrick MR et al., Spine
#: 1987;12:160-166); the tolerance is above that.
NEIGHBOUR_WIDTH_TOL_MM = 5.0
NEIGHBOUR_WIDTH_TOL_FRAC = 0.5
#: Threads measuring vertebrae at once (the machine's cores, at most 4; ``SPINEPLAN_THREADS``
#: overrides).
MEASURE_THREADS = int(os.environ.get("SPINEPLAN_THREADS", 0)) or min(4, os.cpu_count() or 1)
#: Measure in forked processes rather than threads (``SPINEPLAN_MEASURE_PROCESSES=0``: threads).
_MEASURE_PROCESSES = os.environ.get("SPINEPLAN_MEASURE_PROCESSES", "1") != "0"


def build_spine(ct: Volume, labels: Volume, *, names_confidence: float = 1.0, method: str = "labels",
                warnings: Iterable[str] = (), levels: Iterable[str] | None = None) -> Spine:
    """Measure every vertebra of a VerSe-coded label map on the CT grid and grade fractures.

    ``levels``: measure only these names (the others present still give the measured ones the
    direction of their neighbours), e.g. the levels a plan needs; fractures are then graded
    among the measured levels only."""
    from scipy.ndimage import find_objects

    if not ct.same_grid(labels):
        raise LabelError("The label map is not on the CT's grid (shape or affine differ); "
                         "resample it onto the CT first (spineplan.io.read_labels does this).")
    lab = np.asarray(labels.array)
    if not np.issubdtype(lab.dtype, np.integer):
        lab = np.rint(lab).astype(np.int32)
    objs = find_objects(lab.astype(np.int32, copy=False) if lab.dtype != np.int32 else lab)
    present = []
    for code, sl in enumerate(objs, start=1):
        if sl is None:
            continue
        try:
            name = level_from_verse(code)
        except KeyError:
            continue
        present.append((name, code, sl))
    if not present:
        raise NoVertebraeError("No vertebra labels (VerSe codes 1-28) were found in the label map; "
                               "check the label convention or run the built-in segmentation.")
    present.sort(key=lambda t: level_index(t[0]))
    # centroids first, to give each vertebra its neighbours' direction
    cents = {}
    for name, code, sl in present:
        idx = np.argwhere(lab[sl] == code)
        if len(idx) < _MIN_VOXELS:
            continue
        cents[name] = ct.index_to_world(idx.mean(axis=0) + [s.start for s in sl])
    names = [n for n, _, _ in present if n in cents]
    wanted = None if levels is None else set(levels)
    todo = []
    for name, code, sl in present:
        if name not in cents or (wanted is not None and name not in wanted):
            continue
        i = names.index(name)
        nb = [cents[names[j]] for j in (i - 1, i + 1) if 0 <= j < len(names) and names[j] != "S1"]
        todo.append((name, code, sl, nb))
    # vertebrae are measured independently, MEASURE_THREADS at once: in forked worker processes
    # where the platform has fork (the fits are Python loops that hold the GIL: threads gained
    # ~1.3x on 2 cores), else on threads; the order of the results is kept
    workers = max(1, min(MEASURE_THREADS, len(todo)))
    verts = None if todo else []  # (no empty "measuring vertebrae: 0it" bar)
    if workers > 1 and _MEASURE_PROCESSES:
        verts = _measure_in_processes(ct, lab, todo, workers)
    if verts is None:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            verts = list(progress(pool.map(lambda t: _measure_one(ct, lab, t), todo),
                                  desc="measuring vertebrae", total=len(todo)))
    _check_pedicles_against_neighbours(verts)
    spine = Spine(vertebrae=verts, labels=labels, naming_confidence=float(names_confidence),
                  naming_method=method, warnings=list(warnings) + frames_out_of_line(verts))
    grade_fractures(spine)
    return spine


def _measure_one(ct: Volume, lab: np.ndarray, item):
    name, code, sl, nb = item
    # this level's mask on its box only (a full-CT-size mask per vertebra costs ~80 MB and
    # its clearing time on a 512x512x300 CT)
    return measure_vertebra(ct, lab[sl] == code, name, code, neighbours=nb, bbox=sl, label_map=lab)


#: The CT and label map the forked measuring processes read (set just before the fork, so the
#: children share the parent's memory instead of receiving copies).
_SHARED: dict = {}


def _measure_shared(item):
    return _measure_one(_SHARED["ct"], _SHARED["lab"], item)


def _measure_in_processes(ct: Volume, lab: np.ndarray, todo, workers: int):
    """Measure ``todo`` in ``workers`` forked processes; None when fork is not available."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    if "fork" not in mp.get_all_start_methods():
        return None
    _SHARED.update(ct=ct, lab=lab)
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")) as pool:
            return list(progress(pool.map(_measure_shared, todo), desc="measuring vertebrae", total=len(todo)))
    finally:
        _SHARED.clear()


#: Adjacent vertebrae whose cranio-caudal (z) axes differ by more than this (deg) are reported:
#: the frame (endplate planes) of one of them is probably wrong. Normal sagittal segmental
#: angles are far smaller: recumbent lumbar lordosis T12-S1 36.8 +- 13.2 deg, of which L4-S1
#: 29.8 +- 8.0 deg (Yukawa et al., Asian Spine J 2019;13:663-671, 627 asymptomatic adults), i.e.
#: ~15 deg per lower lumbar segment and ~2 deg per segment above; thoracic kyphosis ~20-50 deg
#: over 12 segments (White & Panjabi). The limits add a wide allowance for deformity and for the
#: axes' own error (engineering values, not published cut-offs).
SEGMENT_ANGLE_MAX_DEG = 20.0
#: ... for the lower lumbar segments (the lower vertebra of the pair L5, L6 or S1).
SEGMENT_ANGLE_MAX_LOW_LUMBAR_DEG = 35.0


def frame_pairs_out_of_line(verts) -> list[tuple[str, str, float, float]]:
    """Adjacent complete vertebrae (``verts`` in cranio-caudal order, adjacent levels only; a
    vertebra cut by the scan has its own warning) whose z axes differ by more than
    :data:`SEGMENT_ANGLE_MAX_DEG` (lower lumbar: :data:`SEGMENT_ANGLE_MAX_LOW_LUMBAR_DEG`):
    ``(upper name, lower name, angle deg, limit deg)``."""
    out = []
    for a, b in zip(verts[:-1], verts[1:]):
        if not adjacent(a.name, b.name) or not (a.complete and b.complete):
            continue
        za, zb = np.asarray(a.frame.axes, float)[2], np.asarray(b.frame.axes, float)[2]
        ang = float(np.degrees(np.arccos(np.clip(abs(za @ zb) / np.linalg.norm(za) / np.linalg.norm(zb), -1, 1))))
        lim = SEGMENT_ANGLE_MAX_LOW_LUMBAR_DEG if b.name in ("L5", "L6", "S1") else SEGMENT_ANGLE_MAX_DEG
        if ang > lim:
            out.append((a.name, b.name, ang, lim))
    return out


#: The lumbosacral segment is lordotic: S1's superior endplate is tilted forward more than L5's
#: (segmental L5-S1 angle -32.4 deg standing, Troyanovich et al., J Spinal Disord 1997;10:380-386;
#: recumbent lordosis is ~3/4 of standing, L4-S1 29.8 +- 8.0 deg, Yukawa et al., Asian Spine J 2019).
#: An L5/S1 pair measured kyphotic by more than this (deg) has a misread frame (the abdomen CT's own
#: S1, the whole sacrum's label: its z 35 deg from the reference S1's, the segment 18 deg kyphotic).
LUMBOSACRAL_KYPHOSIS_MAX_DEG = 10.0


def lumbosacral_kyphosis_deg(verts) -> float | None:
    """The L5/S1 segment's sagittal angle (deg; positive = kyphotic: S1's z tilted backwards
    against L5's in L5's mid-sagittal plane), or None without both complete."""
    by = {v.name: v for v in verts}
    a, b = by.get("L5"), by.get("S1")
    if a is None or b is None or not (a.complete and b.complete):
        return None
    ax = np.asarray(a.frame.axes, float)
    zb = np.asarray(b.frame.axes, float)[2]
    return float(np.degrees(np.arctan2(zb @ ax[1], zb @ ax[2])))


def frames_suspect(spine) -> set[str]:
    """Names of the vertebrae in a pair of :func:`frame_pairs_out_of_line`, and L5 and S1 when
    their segment is kyphotic (:data:`LUMBOSACRAL_KYPHOSIS_MAX_DEG`)."""
    out = {n for a, b, _, _ in frame_pairs_out_of_line(spine.vertebrae) for n in (a, b)}
    if _lumbosacral_out_of_line(spine.vertebrae) is not None:
        out |= {"L5", "S1"}
    return out


def _lumbosacral_out_of_line(verts) -> float | None:
    """:func:`lumbosacral_kyphosis_deg` when beyond :data:`LUMBOSACRAL_KYPHOSIS_MAX_DEG`, else None."""
    k = lumbosacral_kyphosis_deg(verts)
    return k if k is not None and k > LUMBOSACRAL_KYPHOSIS_MAX_DEG else None


def frames_out_of_line(verts) -> list[str]:
    """The warnings for :func:`frame_pairs_out_of_line`. A frame that is off moves everything
    measured in it: the C-arm's true AP/lateral and owl's-eye angles, body heights, the fracture
    grade."""
    out = [f"{a} and {b}: their cranio-caudal axes differ by {ang:.0f} deg (more than {lim:.0f} deg between "
           "adjacent vertebrae is rare without a fracture or a deformity): the frame of one of them (its "
           "endplates) is probably wrong, and with it its C-arm angles, body heights and fracture grade. "
           f"Check {a} and {b} on the images." for a, b, ang, lim in frame_pairs_out_of_line(verts)]
    k = _lumbosacral_out_of_line(verts)
    if k is not None:
        out.append(f"L5 and S1: the lumbosacral segment measures {k:.0f} deg kyphotic (it is lordotic in nearly "
                   f"everyone; more than {LUMBOSACRAL_KYPHOSIS_MAX_DEG:.0f} deg kyphotic is implausible): the frame "
                   "of one of them, likely S1's, is probably wrong, and with it its C-arm angles. Check L5 and S1 "
                   "on the images.")
    return out


def _check_pedicles_against_neighbours(verts) -> None:
    """Drop a pedicle that is out of line with both its adjacent levels and its other side.

    ``verts`` are in cranio-caudal order. The expected width is the median isthmus width of the
    pedicles of the adjacent present levels (both sides; the median, so that one wrong neighbour
    does not carry it: the chest CT's own labels read T10 left 13.7 and T11 left 15.2 mm beside
    rib heads, and with the mean each kept the other in line). A pedicle far from it is rejected (with a
    warning in its vertebra) only when the other side of the same vertebra is missing, or
    disagrees with it and is nearer the expectation: a whole level that is wider than its
    neighbours is anatomy, not an error.
    """
    widths = [[p.isthmus_width_mm for p in v.pedicles.values()] for v in verts]
    drop = []
    for i, v in enumerate(verts):
        nb = [w for j in (i - 1, i + 1) if 0 <= j < len(verts)
              and adjacent(verts[j].name, v.name) for w in widths[j]]
        if not nb:
            continue
        expect = float(np.median(nb))
        off = {side: abs(p.isthmus_width_mm - expect) for side, p in v.pedicles.items()}
        for side, p in v.pedicles.items():
            if off[side] <= max(NEIGHBOUR_WIDTH_TOL_MM, NEIGHBOUR_WIDTH_TOL_FRAC * expect):
                continue
            o_side = "right" if side == "left" else "left"
            o = v.pedicles.get(o_side)
            # both sides agree (the level is what it is), or the other side is the odd one
            if o is not None and (pedicles_disagree(p, o) is None or off[o_side] > off[side]):
                continue
            drop.append((v, side, expect))
    for v, side, expect in drop:
        p = v.pedicles.pop(side)
        v.warnings.append(f"{v.name}: the {side} pedicle measurement was rejected (isthmus width "
                          f"{p.isthmus_width_mm:.1f} mm, adjacent levels {expect:.1f} mm, and the other side "
                          "does not confirm it); it is not reported.")


def _clean(o: Any) -> Any:
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (np.bool_, bool)):
        return bool(o)
    if isinstance(o, (float, np.floating)):
        f = float(o)
        return round(f, 4) if np.isfinite(f) else None
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.ndarray):
        return _clean(o.tolist())
    return o


def spine_to_json(spine: Spine) -> dict:
    """The ``spine.json`` dictionary: names, naming confidence, warnings, measurements, grades."""
    verts = {}
    for v in spine.vertebrae:
        d = v.to_dict()
        d["frame"] = {"origin": d["frame"]["origin"], "axes": {"x": d["frame"]["axes"][0],
                                                               "y": d["frame"]["axes"][1],
                                                               "z": d["frame"]["axes"][2]}}
        verts[v.name] = d
    out = {
        "format": SPINE_FORMAT,
        "version": SPINE_VERSION,
        "frame": "LPS",
        "units": {"length": "mm", "angle": "deg", "volume": "mL", "density": "HU"},
        "created_by": f"spineplan {__version__}",
        "disclaimer": DISCLAIMER,
        "names": spine.names,
        "naming": {"confidence": float(spine.naming_confidence), "method": spine.naming_method},
        "warnings": list(spine.warnings) + [w for v in spine.vertebrae for w in v.warnings],
        "thresholds": {
            "osteoporosis_suspected_below_hu": OSTEOPOROSIS_HU,
            "osteoporosis_source": "Pickhardt et al., Ann Intern Med 2013;158:588-595 (L1 trabecular HU)",
            "fracture_grading": "Genant et al., J Bone Miner Res 1993;8:1137-1148",
        },
        "vertebrae": verts,
    }
    return _clean(out)


def write_spine_json(spine: Spine, path: TypePath):
    """Write ``spine.json`` atomically; returns the path."""
    return write_text(path, json.dumps(spine_to_json(spine), indent=2) + "\n")
