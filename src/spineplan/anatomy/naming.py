"""Level naming: count from the sacrum and from the last rib-bearing vertebra, cross-checked.

Anchors (Carrino et al., AJR 2011; Hughes & Saifuddin, AJR 2006, on numbering errors and
transitional anatomy):

- **S1**: the sacrum, the large fused bone with the alae that articulates with both iliac bones
  (sacro-iliac joints). The vertebra above it is L5.
- **T12**: the last rib-bearing vertebra (12 rib pairs in ~90 % of people). Its rib articulates
  with the body (costovertebral joint).

When both are seen, there must be exactly five non-rib-bearing vertebrae between them; four or
six mean transitional anatomy (sacralised L5 / lumbarised S1, 11 or 13 rib pairs) and the user
is asked to confirm. ``anchor=`` fixes one name and overrides the automatic count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from spineplan.errors import InputError
from spineplan.levels import VERSE_CODES, level_from_verse

#: The usual sequence of vertebrae (transitional T13/L6 only when flagged).
STANDARD = [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)] + ["S1"]

#: Ala span: the sacral base is 95-120 mm wide (ala to ala); the sacrum's label medial to the
#: sacro-iliac joints is at least this wide.
SACRUM_MIN_WIDTH_MM = 60.0
#: Largest gap (mm) between a vertebra and a rib / ilium that still counts as an articulation
#: (joint space 1-3 mm plus partial-volume loss at 3 mm voxels).
CONTACT_MM = 5.0
#: Smallest volume of bone (mm^3) within CONTACT_MM of a vertebra that makes a rib contact.
CONTACT_MIN_MM3 = 25.0
#: Sacro-iliac contact: the auricular surfaces are ~15-20 cm^2 each side; we ask for a small
#: fraction of that within CONTACT_MM.
SI_CONTACT_MIN_MM3 = 400.0
#: A sacrum label may stop short of one sacro-iliac joint (at coarse voxels the joint is not dark,
#: and the segmentation keeps the posterior ilium apart): one side touching the ilium this many
#: times SI_CONTACT_MIN_MM3, with any cortical contact (CONTACT_MIN_MM3) on the other, also marks
#: the sacrum (engineering value: the phantoms' sacra, 0.8-1 mm voxels, touched one ilium over
#: 0.97 mL and the other over 0.04 mL).
SI_ONE_SIDE_FACTOR = 2.0
#: Where rib heads and necks touch a vertebra, relative to the body centre (mm, + posterior):
#: costovertebral joints at the back of the body, costotransverse joints at the transverse
#: processes. Contrast-filled vessels and organs lie anterior of this.
RIB_POST_MM = (0.0, 50.0)
#: A rib contains cortical bone: its brightest voxel exceeds this (HU) even at 3 mm voxels;
#: contrast-enhanced kidneys and veins (150-300 HU in portal phase) do not.
RIB_MIN_HU = 350.0
#: ... or, in dim (osteoporotic) scans, this fraction of the vertebrae's 99th-percentile HU.
RIB_CORTEX_FRACTION = 0.8
#: The ilium touches the sacrum along the whole sacro-iliac joint: the auricular surface spans the
#: lateral masses of S1-S3 (Vleeming A et al., "The sacroiliac joint: an overview of its anatomy,
#: function and potential clinical implications", J Anat 2012;221:537-567), i.e. several cm
#: cranio-caudally, while a rib touches its vertebra only at the rib head and tubercle (about
#: 1-2 cm, both within one level). A contact with a segment that spans at least this much along
#: the spine (5th-95th percentile) marks the bone as ilium even when its volume is small
#: (osteoporotic ilium: marrow below the bone threshold, only the thin cortex is bone).
#: Engineering value: half the S1-S3 span, to allow for scans that cut the joint.
ILIUM_CONTACT_SPAN_MM = 30.0
#: A bone piece counts as ilium by its volume alone above this (mL): larger than any rib
#: within a spine-centred field of view (engineering value, from the phantoms and the abdomen CT).
ILIUM_MIN_ML = 40.0
#: A rib runs from its head at the vertebral body out beyond the transverse processes: the piece
#: touching a vertebra must span at least this much laterally (max - min distance from the
#: midline). A broken-off bit of a transverse process that an imperfect segmentation left
#: unlabelled is shorter (engineering value: the rib heads lie ~20-25 mm from the midline, the
#: phantoms' and real ribs reach beyond 70 mm).
RIB_MIN_LATERAL_SPAN_MM = 25.0
#: Smallest volume (mL) of a labelled piece kept as a (partial) vertebra.
MIN_VERTEBRA_ML = 0.5

CONF_CROSS_CHECKED = 0.95
CONF_SACRUM_ONLY = 0.8
CONF_RIBS_ONLY = 0.7
CONF_DISAGREE = 0.5
CONF_NO_ANCHOR = 0.15
CONF_USER_ANCHOR = 0.99


@dataclass
class Naming:
    names: list[str]
    codes: list[int]  # per segment (cranial first), 0 = dropped
    confidence: float
    method: str
    warnings: list[str] = field(default_factory=list)
    partial: dict[str, bool] = field(default_factory=dict)
    rib_bearing: dict[str, bool] = field(default_factory=dict)
    sacrum_found: bool = False


_ANCHOR_RE = re.compile(r"^\s*([CTLS]\d{1,2})\s*@\s*(.+)$", re.I)


def parse_anchor(anchor: str, ct) -> tuple[str, np.ndarray | None, float | None]:
    """``"L3@z=-210.5"`` -> ("L3", None, -210.5); ``"L3@120,80,40"`` -> ("L3", LPS point, None)."""
    m = _ANCHOR_RE.match(anchor or "")
    if not m:
        raise InputError(
            f"Cannot read the anchor {anchor!r}: write LEVEL@z=Z_MM (LPS z in mm, e.g. L3@z=-210.5) "
            "or LEVEL@I,J,K (voxel indices, e.g. L3@120,80,40)."
        )
    name = m.group(1).upper()
    if name not in VERSE_CODES:
        raise InputError(f"Unknown level {name!r} in the anchor {anchor!r}; use names like L3, T12 or S1.")
    rest = m.group(2).strip().lower()
    try:
        if rest.startswith("z="):
            return name, None, float(rest[2:])
        ijk = [float(v) for v in rest.split(",")]
        if len(ijk) != 3:
            raise ValueError
    except ValueError:
        raise InputError(f"Cannot read the position in the anchor {anchor!r}: give z=Z_MM or I,J,K.") from None
    return name, ct.index_to_world(np.array(ijk)), None


def _names_from(index: int, name: str, n: int, lumbar_count: int = 5) -> list[str]:
    """Names of ``n`` segments (cranial first) when segment ``index`` is ``name``."""
    seq = [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, lumbar_count + 1)] + ["S1"]
    if name not in seq:
        seq = STANDARD
    pos = seq.index(name)
    out = []
    for i in range(n):
        p = pos + (i - index)
        out.append(seq[p] if 0 <= p < len(seq) else "")
    return out


def _anchor_example(segs, order, names, curve) -> str:
    """', e.g. --anchor L4@z=-95.3 (...)' for the middle vertebra of this scan (its guessed name at
    the z of its body's centre on the curve), or '' when there is none."""
    if not order:
        return ""
    k = len(order) // 2
    sg = segs[order[k]]
    j = int(np.argmin(np.abs(curve.s - 0.5 * (sg.s0 + sg.s1))))
    z = float(curve.points[j, 2])
    return (f", e.g. --anchor {names[k]}@z={z:.1f} if the vertebra whose body centre is at z = {z:.1f} mm "
            f"(LPS, now guessed {names[k]}) is in fact {names[k]}; write its true name instead if it is not")


#: A segment at either end of the row that is smaller than this fraction of its neighbour's
#: volume and does not reach the scan's edge (so it is not a vertebra cut by the field of view)
#: is a fragment of that neighbour cut off by a false disc, and is joined to it. Adjacent
#: vertebrae differ by ~10-20 % in volume per level (lumbar, Limthongkul et al., Spine 2010);
#: engineering threshold from a phantom sweep (fragments were 7-25 % of their neighbour).
FRAGMENT_VOLUME_FRACTION = 0.35
#: Two adjacent vertebrae each smaller than this fraction of the mean of the vertebrae just above
#: and below them, together the size of one (SPLIT_SUM_RANGE), are likely one vertebra cut in two (the
#: halves were 0.45-0.55 on the phantoms; a crushed vertebra keeps its posterior elements).
SPLIT_HALF_FRACTION = 0.65
SPLIT_SUM_RANGE = (0.7, 1.4)
#: A vertebra more than this many times the mean volume of the vertebrae just above and below it is
#: likely two (or more) vertebrae in one label (a disc not found: osteoporotic marrow is as dark as a
#: disc, benchmarks/bench_naming.py): a missing vertebra shifts every name counted across it.
#: Adjacent vertebrae differ by ~10-20 % in volume per level (Limthongkul et al., Spine 2010), and a
#: vertebra next to a grade-3 crush (~55 % of a body) is ~1.25 x the mean of its neighbours; two
#: vertebrae in one label are ~2 x.
MERGED_FRACTION = 1.7


def _end_fragments(feats, keep) -> dict[int, int]:
    """End segments of ``keep`` (cranial first) that are fragments of their neighbour: {fragment:
    neighbour}. They are joined to it rather than named: past an anchor a fragment shifts no other
    name, but it would carry a name of its own (e.g. "L2" on L3's superior articular processes)."""
    out: dict[int, int] = {}
    if len(keep) >= 3:
        for i, j in ((keep[0], keep[1]), (keep[-1], keep[-2])):
            if feats[i]["vol_ml"] < FRAGMENT_VOLUME_FRACTION * feats[j]["vol_ml"] and not feats[i].get("at_scan_edge", True):
                out[i] = j
    return out


def _split_pairs(feats, idx) -> list[str]:
    """Adjacent segments of ``idx`` (cranial first, sacrum excluded) that look like one vertebra cut
    in two, each compared with the vertebrae just around them (vertebra size changes along the
    spine): an extra vertebra in the row shifts every name counted across it."""
    vols = [feats[i]["vol_ml"] for i in idx]
    out = []
    for k in range(len(idx) - 1):
        around = [vols[j] for j in (k - 1, k + 2) if 0 <= j < len(idx)]
        end = idx[k] if k == 0 else idx[k + 1] if k + 2 == len(idx) else None
        # a pair at an end of the row only when that end is not cut by the scan (a cut vertebra,
        # or the cervico-thoracic junction, is small for other reasons)
        if not around or (end is not None and feats[end].get("at_scan_edge", True)):
            continue
        ref = float(np.mean(around))
        a, b = vols[k] / ref, vols[k + 1] / ref
        if a < SPLIT_HALF_FRACTION and b < SPLIT_HALF_FRACTION and SPLIT_SUM_RANGE[0] <= a + b <= SPLIT_SUM_RANGE[1]:
            out.append(f"vertebrae {k + 1} and {k + 2} from the top are {a:.0%} and {b:.0%} of the vertebrae around "
                       "them (one vertebra cut in two?)")
    return out


def _merged(feats, idx) -> list[str]:
    """Segments of ``idx`` (cranial first, sacrum excluded) that look like several vertebrae in
    one label: more than :data:`MERGED_FRACTION` x the mean of the vertebrae just around them that
    are not cut by the scan (a cut one is small for other reasons). One cut by the scan itself is
    judged too: cut, it can only be smaller than a whole vertebra."""
    out = []
    for k, i in enumerate(idx):
        around = [feats[idx[j]]["vol_ml"] for j in (k - 1, k + 1)
                  if 0 <= j < len(idx) and not feats[idx[j]].get("at_scan_edge", True)]
        if not around:
            continue
        r = feats[i]["vol_ml"] / float(np.mean(around))
        if r > MERGED_FRACTION:
            out.append(f"vertebra {k + 1} from the top is {r:.1f} x the size of the vertebrae around it "
                       "(two vertebrae in one label?)")
    return out


def _distance_to(mask: np.ndarray, spacing, reach_mm: float):
    """(distance mm, index of the nearest voxel) to ``mask`` like scipy's distance_transform_edt
    of ``~mask``, exact within ``reach_mm`` of it and inf beyond: computed in the box of ``mask``
    grown by the reach (every voxel of the mask is inside it, so the nearest one is too). Whole
    grid: ~0.75 s of naming a 512x512x300 CT."""
    from scipy import ndimage as ndi

    dist = np.full(mask.shape, np.inf)
    ind = np.zeros((mask.ndim,) + mask.shape, np.intp)
    nzs = np.nonzero(mask.any(axis=(1, 2))), np.nonzero(mask.any(axis=(0, 2))), np.nonzero(mask.any(axis=(0, 1)))
    if any(len(a[0]) == 0 for a in nzs):
        return dist, ind
    pad = [int(np.ceil(reach_mm / float(sp))) + 1 for sp in spacing]
    sl = tuple(slice(max(0, int(a[0][0]) - p), min(n, int(a[0][-1]) + p + 1)) for a, p, n in zip(nzs, pad, mask.shape))
    d, i = ndi.distance_transform_edt(~mask[sl], sampling=spacing, return_indices=True)
    dist[sl] = d
    for ax in range(mask.ndim):
        ind[(ax,) + sl] = i[ax] + sl[ax].start
    return dist, ind


def name_segments(segs, inst, bone, coords, curve, grid, box, *, anchor=None, ct=None, hu_box=None) -> Naming:
    """Name the instance segments (cranial first) and drop empty ones."""
    from scipy import ndimage as ndi


    vox_ml = float(np.prod(grid.spacing)) / 1000.0
    nz = np.nonzero(bone)
    labf = inst[nz]
    s, lat, post = coords["s"], coords["lat"], coords["post"]
    feats = []
    for sg in segs:
        sel = labf == sg.label
        n = int(sel.sum())
        f = {"vol_ml": n * vox_ml}
        if n:
            f["width_mm"] = float(np.percentile(lat[sel], 99.5) - np.percentile(lat[sel], 0.5))
            f["s_min"], f["s_max"] = float(s[sel].min()), float(s[sel].max())
            zi = nz[2][sel] + box[2].start  # working axis 2 is superior
            f["at_scan_edge"] = bool(zi.min() <= 1 or zi.max() >= grid.shape[2] - 2)
        feats.append(f)
    keep = [i for i, f in enumerate(feats) if f["vol_ml"] >= MIN_VERTEBRA_ML]
    fragments = _end_fragments(feats, keep)
    keep = [i for i in keep if i not in fragments]

    # ---- contacts with non-vertebra bone (ribs, ilium)
    vert = np.isin(inst, [sg.label for sg in segs])
    nonvert = bone & ~vert
    comp, ncomp = ndi.label(nonvert)
    dist, ind = _distance_to(vert, grid.spacing, CONTACT_MM)
    contact = nonvert & (dist <= CONTACT_MM)
    # features of non-vertebra components (from the flat coords)
    compf = comp[nz]
    cvol = np.bincount(compf, minlength=ncomp + 1) * vox_ml
    cmaxlat = np.zeros(ncomp + 1)
    np.maximum.at(cmaxlat, compf, np.abs(lat))
    cmaxhu = np.full(ncomp + 1, -np.inf)
    np.maximum.at(cmaxhu, compf, hu_box[nz])
    cminlat = np.full(ncomp + 1, np.inf)
    np.minimum.at(cminlat, compf, np.abs(lat))
    contf = contact[nz]
    nearest_lab = inst[tuple(i[nz] for i in ind)]
    rib_contacts: dict[int, dict[str, int]] = {sg.label: {"left": 0, "right": 0} for sg in segs}
    ilium_contacts: dict[int, dict[str, int]] = {sg.label: {"left": 0, "right": 0} for sg in segs}
    # ribs are as bright as the vertebrae's own cortex; osteoporotic bone is dimmer overall
    hv = hu_box[nz][np.isin(labf, [sg.label for sg in segs])]
    rib_min_hu = min(RIB_MIN_HU, RIB_CORTEX_FRACTION * float(np.percentile(hv, 99))) if hv.size else RIB_MIN_HU
    sel = np.nonzero(contf & (compf > 0))[0]
    c = compf[sel]
    lv, lt, pt = nearest_lab[sel], lat[sel], post[sel]
    ok = ((cmaxlat[c] >= 45.0) & (pt >= RIB_POST_MM[0]) & (pt <= RIB_POST_MM[1])
          & (np.abs(lt) >= 10.0) & (np.abs(lt) <= 65.0) & (cmaxhu[c] >= rib_min_hu))
    # ilium: a big piece, or one whose contact with one of the three most caudal segments runs
    # along the spine like the sacro-iliac joint (its volume can be small in osteoporotic bone)
    is_ilium = cvol > ILIUM_MIN_ML
    is_ilium[0] = False
    side_of = {"left": lt > 0, "right": lt <= 0}
    s_c = s[sel]
    for i in keep[-3:]:
        for side_sel in side_of.values():
            m = ok & side_sel & (lv == segs[i].label)
            for k in np.unique(c[m]):
                sk = s_c[m & (c == k)]
                if len(sk) >= 10 and np.subtract(*np.percentile(sk, [95, 5])) >= ILIUM_CONTACT_SPAN_MM:
                    is_ilium[k] = True
    # a rib is long: it runs out from the vertebra (not a detached bit of a transverse process);
    # a short piece counts for the sacrum's joints only when it is ilium, and never as a rib (on
    # an L2-L4 phantom without pelvis, unlabelled transverse-process tips touching all three
    # vertebrae along 83 mm were taken for ilium and then counted as L3's rib: named T12, 0.7)
    long_piece = cmaxlat[c] - cminlat[c] >= RIB_MIN_LATERAL_SPAN_MM
    ok &= is_ilium[c] | long_piece
    rib_like: dict[int, dict[str, int]] = {sg.label: {"left": 0, "right": 0} for sg in segs}
    ilium_like: dict[int, dict[str, int]] = {sg.label: {"left": 0, "right": 0} for sg in segs}

    def count_contacts():
        big = is_ilium[c]
        for lbl in rib_contacts:
            for side, sgn in side_of.items():
                m = ok & (lv == lbl) & sgn
                rib_contacts[lbl][side] = int(m.sum())
                ilium_contacts[lbl][side] = int((m & big).sum())
                rib_like[lbl][side] = int((m & long_piece).sum())
                ilium_like[lbl][side] = int((m & long_piece & big).sum())

    count_contacts()
    min_contact = max(3, int(round(CONTACT_MIN_MM3 / (vox_ml * 1000.0))))

    # ---- sacrum: among the three most caudal segments, the one with the largest contact with
    # the ilia on both sides; everything caudal of it is sacrum too. One side must be a proven
    # ilium (big, or touching along the joint); on the other side, where an imperfect
    # segmentation may leave only a short stretch of the joint next to the label, any lateral
    # bone as bright as cortex touching as much will do (that bone is then taken as ilium).
    si_min = max(3, int(round(SI_CONTACT_MIN_MM3 / (vox_ml * 1000.0))))
    sacrum_i = None
    best = 0
    for i in keep[-3:]:
        if feats[i].get("width_mm", 0) < SACRUM_MIN_WIDTH_MM:
            continue
        il, rc = ilium_contacts[segs[i].label], rib_contacts[segs[i].label]
        both = max(min(il["left"], rc["right"]), min(rc["left"], il["right"]))
        # ... or one joint in full contact and some cortical contact on the other side
        strong, other = max((il["left"], rc["right"]), (il["right"], rc["left"]))
        one_sided = strong >= SI_ONE_SIDE_FACTOR * si_min and other >= min_contact
        if (both >= si_min or one_sided) and both > best:
            best, sacrum_i = both, i
    if sacrum_i is not None:
        lbl = segs[sacrum_i].label
        for side, sgn in side_of.items():
            if ilium_contacts[lbl][side] < si_min:
                is_ilium[np.unique(c[ok & sgn & (lv == lbl)])] = True
        count_contacts()
    # ---- rib-bearing vertebrae: contact with a thin lateral bone that is not the ilium
    rib = {}
    for i in keep:
        if sacrum_i is not None and i >= sacrum_i:
            rib[i] = False
            continue
        rc = rib_like[segs[i].label]
        il = ilium_like[segs[i].label]
        # ilium-sized components touching just above the sacrum are the iliac crest, not ribs
        near_sacrum = sacrum_i is not None and i >= sacrum_i - 2
        lr = [rc[sd] - (il[sd] if near_sacrum else 0) for sd in ("left", "right")]
        rib[i] = max(lr) >= min_contact
    rib_idx = [i for i in keep if rib.get(i)]
    # the last rib-bearing vertebra is T12 only if a vertebra without ribs is seen below it
    if rib_idx and not any(not rib.get(i) for i in keep if i > rib_idx[-1] and (sacrum_i is None or i <= sacrum_i)):
        rib_idx = []
        ribs_to_edge = True
    else:
        ribs_to_edge = False

    # merge everything caudal of S1 into the sacrum
    order = [i for i in keep if sacrum_i is None or i <= sacrum_i]
    n = len(order)
    pos = {i: p for p, i in enumerate(order)}
    warnings: list[str] = []
    names: list[str]
    auto_names = None
    method = ""
    conf = CONF_NO_ANCHOR
    last_rib = rib_idx[-1] if rib_idx else None
    if sacrum_i is not None and last_rib is not None:
        gap = pos[sacrum_i] - pos[last_rib] - 1  # lumbar-type vertebrae between
        if gap == 5:
            auto_names = _names_from(pos[sacrum_i], "S1", n)
            conf, method = CONF_CROSS_CHECKED, "sacrum-count+last-rib cross-checked"
        elif gap == 6 and min(rib_like[segs[last_rib].label].values()) >= min_contact:
            # (only with a pair of ribs on the last rib-bearing vertebra: a missed short 12th rib
            # at coarse voxels must not turn L5 into "L6")
            # six lumbar-type vertebrae: T12 from the last rib, then L1-L6 (transitional L6)
            lumb = gap
            auto_names = _names_from(pos[last_rib], "T12", n, lumbar_count=6)
            conf, method = CONF_DISAGREE, "last-rib count, L6 (six lumbar-type vertebrae above the sacrum)"
            warnings.append(
                "Transitional anatomy: six non-rib-bearing vertebrae between the last rib-bearing vertebra "
                "and the sacrum. Named T12 (last rib), L1-L6; it may instead be a lumbarised S1 or 11 rib "
                "pairs. Confirm by counting from C2 on a whole-spine image before choosing a level."
            )
        else:
            lumb = gap
            auto_names = _names_from(pos[sacrum_i], "S1", n)
            conf, method = CONF_DISAGREE, "sacrum-count (last rib disagrees)"
            warnings.append(
                f"Transitional anatomy suspected: {lumb} non-rib-bearing vertebrae between the last "
                "rib-bearing vertebra and the sacrum (5 expected). Possible "
                + ("lumbarised S1 / L6 or 11 rib pairs" if lumb > 5 else "sacralised L5 or 13 rib pairs")
                + ". Names count up from the sacrum; confirm on a whole-spine image (count from C2)."
            )
    elif sacrum_i is not None:
        auto_names = _names_from(pos[sacrum_i], "S1", n)
        conf, method = CONF_SACRUM_ONLY, "sacrum-count"
        top_name = auto_names[0] if auto_names else ""
        if top_name.startswith("T") or top_name == "":
            warnings.append("No rib-bearing vertebra was found where T12 should be: confirm the count from the sacrum (possible 11 rib pairs or a missed short 12th rib).")
            conf = CONF_DISAGREE
        else:
            warnings.append("Names count up from the sacrum only (no rib-bearing vertebra in the scan to cross-check); confirm L5/S1.")
    elif last_rib is not None:
        auto_names = _names_from(pos[last_rib], "T12", n)
        conf, method = CONF_RIBS_ONLY, "last-rib count"
        warnings.append("The sacrum is not in the scan: names count from the last rib-bearing vertebra (T12). Confirm there are 12 rib pairs (11 or 13 shift every name).")
    elif ribs_to_edge:
        # every vertebra down to the scan's lower edge bears ribs: thoracic, but the last
        # rib-bearing vertebra (T12) may lie below the scan. The lowest one is guessed T12 (a
        # rib-bearing vertebra is never named lumbar; the true names may be higher).
        low = max(i for i in keep if rib.get(i))
        method = "no anchor (guess)"
        auto_names = _names_from(pos[low], "T12", n)
        warnings.append("Ribs reach the lower edge of the scan: these are thoracic vertebrae, but the last "
                        "rib-bearing vertebra (T12) is not seen, so the names are a guess (the lowest "
                        "rib-bearing vertebra assumed T12; it may be higher). Confirm one level and give it with "
                        "--anchor" + _anchor_example(segs, order, auto_names, curve) + ".")
    else:
        # no anchor: lumbar assumed, and the window of vertebrae placed where its worst-case
        # naming error is least (the middle one L3: off by at most two levels, where "ending at
        # L5" is off by up to four); more than five vertebrae end at L5
        method = "no anchor (guess)"
        auto_names = _names_from((n - 1) // 2, "L3", n) if n <= 5 else _names_from(n - 1, "L5", n)
        warnings.append("Neither the sacrum nor a rib-bearing vertebra is in the scan: the names are a guess (lumbar "
                        "assumed, " + ("the middle vertebra named L3" if n <= 5 else "ending at L5") + "). Confirm "
                        "one level and give it with --anchor" + _anchor_example(segs, order, auto_names, curve) + ".")
    names = auto_names
    row = order if sacrum_i is None else order[:-1]
    split = _split_pairs(feats, row) + _merged(feats, row)
    if split and not anchor:
        conf = min(conf, CONF_DISAGREE)
    if split:
        warnings.append("The vertebra count may be wrong: " + "; ".join(split) + ". Every name may then be off "
                        "by one: check the label map (anatomy.png) and confirm one level before choosing a level.")

    if anchor:
        aname, point, zval = parse_anchor(anchor, ct)
        if point is None:
            j = int(np.argmin(np.abs(curve.points[:, 2] - zval)))
            s_a = float(curve.s[j])
        else:
            s_a = float(curve.frame_coords(point[None, :])[0][0])
        best = None
        for i in order:
            if segs[i].s0 - 1e-6 <= s_a <= segs[i].s1 + 1e-6:
                best = i
        if best is None:
            raise InputError(f"The anchor {anchor!r} does not fall on a vertebra found in the CT; check the position.")
        anchored = _names_from(pos[best], aname, n)
        if auto_names and auto_names != anchored and method != "no anchor (guess)":
            warnings.append(f"The anchor ({anchor}) disagrees with the automatic naming ({method}); the anchor was used.")
        names, conf, method = anchored, CONF_USER_ANCHOR, f"user anchor {aname}"
        warnings = [w for w in warnings if not w.startswith(("Neither the sacrum", "Ribs reach the lower edge"))]

    codes = [0] * len(segs)
    out_names: list[str] = []
    partial: dict[str, bool] = {}
    rib_bearing: dict[str, bool] = {}
    for i in order:
        nm = names[pos[i]]
        if not nm:
            continue
        codes[i] = VERSE_CODES[nm]
        out_names.append(nm)
        part = bool(segs[i].partial_top or segs[i].partial_bottom) and nm != "S1"
        partial[nm] = part
        rib_bearing[nm] = bool(rib.get(i, False))
    if sacrum_i is not None:
        for i in keep:
            if i > sacrum_i:
                codes[i] = VERSE_CODES["S1"]
    for i, j in fragments.items():
        codes[i] = codes[j]
        if codes[j]:
            warnings.append(f"A small piece of bone past the last disc ({feats[i]['vol_ml']:.1f} mL, "
                            f"{feats[i]['vol_ml'] / feats[j]['vol_ml']:.0%} of its neighbour, not cut by the scan's "
                            f"edge) was taken as part of {level_from_verse(codes[j])}, not as a vertebra of its own: "
                            "check the label map there.")
    cut = [nm for nm, p in partial.items() if p]
    if cut:
        warnings.append(f"Cut by the edge of the scan (partial: body sizes, heights and fracture grade not "
                        f"measured; pedicles measured where they are in the scan): {', '.join(cut)}.")
    return Naming(out_names, codes, float(conf), method, warnings, partial, rib_bearing, sacrum_i is not None)
