"""The spine phantom: its ground truth must be what a measurement of its own image gives.

Measurements here are made on the rasterised label map / CT (trilinear sampling of the binary
mask, boundary at 0.5) along the directions the truth states; they do not call the phantom's
own geometry code.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from _phantoms import get_phantom
from spineplan.anatomy.model import VertebraFrame
from spineplan.errors import InputError
from spineplan.phantom import genant_loss_pct, load_truth, make_phantom, write_phantom

FINE = dict(levels="T12-L5", spacing=0.5, fov="spine", noise_hu=0.0, ribs=False)
SMALL = dict(levels="L4-L5", spacing=0.5, fov="spine", noise_hu=0.0, ribs=False)
DEFAULT_1MM = dict(spacing=1.0, noise_hu=10.0)


# --------------------------------------------------------------------------- measurement helpers
def _mask_volume(ph, code):
    return ph.labels.with_array((ph.labels.array == code).astype(np.float32))


def _first_out(vol, p0, d, inside=True, max_len=60.0, step=0.02):
    """Distance along d from p0 to where the mask (trilinear, 0.5) flips."""
    d = np.asarray(d, float) / np.linalg.norm(d)
    t = np.arange(0.0, max_len, step)
    vals = vol.sample(np.asarray(p0)[None, :] + t[:, None] * d[None, :], order=1, fill=0.0)
    flip = vals < 0.5 if inside else vals >= 0.5
    k = int(np.argmax(flip))
    assert flip[k], "no boundary found"
    v0, v1 = vals[k - 1], vals[k]
    return float(t[k - 1] + (v0 - 0.5) / (v0 - v1) * step) if k > 0 else 0.0


def chord(vol, p, d):
    return _first_out(vol, p, d) + _first_out(vol, p, -np.asarray(d))


def gap(vol, p, d):
    return _first_out(vol, p, d, inside=False) + _first_out(vol, p, -np.asarray(d), inside=False)


def _tolerance(spacing: float) -> float:
    """Truth-vs-image tolerance: max(0.5 mm, 0.6 voxel) at 0.5 mm; about one voxel when coarser.

    A chord read off a voxelised mask along an oblique line is off by up to ~half a voxel
    diagonal per end (measured over six random phantoms: <= 0.36 mm at 0.5 mm, <= 0.83 voxel
    at 0.8 mm)."""
    return max(0.5, 0.6 * spacing) if spacing <= 0.5 else max(0.5, 0.9 * spacing)


def _pedicle_dirs(v, side):
    a = np.array(v["pedicles"][side]["axis"])
    z = np.array(v["axes"]["z"])
    up = z - z.dot(a) * a
    up /= np.linalg.norm(up)
    return a, np.cross(up, a), up


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("kw", [DEFAULT_1MM, dict(spacing=1.0, lordosis_deg=65.0, scoliosis_deg=35.0,
                                                  rotation_deg=25.0, fracture="L2:3:crush", seed=5)],
                         ids=["default", "deformed"])
def test_vertebrae_are_separate_bones(kw):
    """Each vertebra is one connected piece and never touches a neighbour (discs and facet
    joint spaces separate them), so connected-component segmentation can split them."""
    from scipy import ndimage

    ph = get_phantom(**kw)
    assert ph.truth["label_overlap_voxels"] == 0  # no two vertebrae claim the same voxel
    lab = ph.labels.array
    box = ndimage.find_objects((lab > 0).astype(np.uint8))[0]
    lab = lab[tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)]
    full = np.ones((3, 3, 3), bool)  # 26-connectivity
    for code in np.unique(lab)[1:]:
        sizes = np.bincount(ndimage.label(lab == code, structure=full)[0].ravel())[1:]
        assert len(sizes) == 1, (code, sizes)
    # no voxel has a 26-neighbour of another vertebra
    hi = ndimage.maximum_filter(lab, size=3)
    lo = ndimage.minimum_filter(np.where(lab > 0, lab, 255).astype(np.uint8), size=3)
    touching = (lab > 0) & ((hi > lab) | (lo < lab))
    assert not np.any(touching), np.unique(lab[touching])


def test_truth_format_and_labels_per_level():
    ph = get_phantom(**DEFAULT_1MM)
    t = ph.truth
    assert t["format"] == "spineplan.phantom-truth" and t["version"] == 1 and t["frame"] == "LPS"
    names = list(t["vertebrae"])
    assert names == ["T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1"]
    present = set(np.unique(ph.labels.array).tolist()) - {0}
    assert present == {18, 19, 20, 21, 22, 23, 24, 26}
    for n, v in t["vertebrae"].items():
        assert v["label"] in present
        assert np.count_nonzero(ph.labels.array == v["label"]) * 1.0 > 20_000  # > 20 mL of bone each
        ax = np.array([v["axes"][k] for k in "xyz"])
        np.testing.assert_allclose(ax @ ax.T, np.eye(3), atol=1e-5)
        assert np.linalg.det(ax) == pytest.approx(1.0, abs=1e-5)  # right-handed x left, y post, z sup
    assert ph.ct.orientation() == "LPS" and ph.ct.same_grid(ph.labels)
    assert ph.ct.array.dtype == np.int16 and ph.labels.array.dtype == np.uint8
    json.dumps(t)  # JSON-serialisable


@pytest.mark.parametrize("kw", [FINE, dict(levels="T11-T12", spacing=0.8, fov="full", noise_hu=10.0, ribs=True),
                                dict(levels="L4-S1", spacing=1.0, noise_hu=10.0, lordosis_deg=55.0, seed=7)],
                         ids=["T12-L5@0.5", "T11-T12+ribs@0.8", "L4-S1@1.0"])
def test_isthmus_width_and_height_match_label_map(kw):
    ph = get_phantom(**kw)
    tol = _tolerance(float(ph.ct.spacing[0]))
    for name, v in ph.truth["vertebrae"].items():
        vol = _mask_volume(ph, v["label"])
        for side in ("left", "right"):
            p = v["pedicles"][side]
            if not p["isthmus_measurable"]:  # S1: the pedicle runs into the ala
                assert name == "S1"
                continue
            c = np.array(p["isthmus_center"])
            a, e_side, e_up = _pedicle_dirs(v, side)
            w = chord(vol, c, e_side)
            h = chord(vol, c, e_up)
            assert w == pytest.approx(p["isthmus_width_mm"], abs=tol), (name, side, "width")
            assert h == pytest.approx(p["isthmus_height_mm"], abs=tol), (name, side, "height")
            # it is the narrowest cross-section: widths along the axis are larger on both sides
            widths = [chord(vol, c + s * a, e_side) for s in (-6.0, -3.0, 3.0, 6.0)]
            assert min(widths) > p["isthmus_width_mm"] - tol, (name, side, widths)
            assert widths[0] > w and widths[-1] > w, (name, side, widths, w)


def test_body_and_canal_dimensions_match_label_map():
    ph = get_phantom(**FINE)
    tol = _tolerance(float(ph.ct.spacing[0]))
    for name, v in ph.truth["vertebrae"].items():
        vol = _mask_volume(ph, v["label"])
        o = np.array(v["frame_origin"])
        x, y, z = (np.array(v["axes"][k]) for k in "xyz")
        depth = chord(vol, o, y)
        assert depth == pytest.approx(v["body_ap_depth_mm"], abs=tol), name
        half = depth / 2
        for key, off in (("anterior_height_mm", -half + 3.0), ("middle_height_mm", 0.0),
                         ("posterior_height_mm", half - 3.0)):
            assert chord(vol, o + off * y, z) == pytest.approx(v[key], abs=tol), (name, key)
        pl, pr = (np.array(v["pedicles"][s]["isthmus_center"]) for s in ("left", "right"))
        mid = (pl + pr) / 2
        assert gap(vol, mid, x) == pytest.approx(v["canal_transverse_mm"], abs=tol), name
        canal_centre = o + (half + v["canal_ap_mm"] / 2) * y + (mid - o).dot(z) * z
        assert gap(vol, canal_centre, y) == pytest.approx(v["canal_ap_mm"], abs=tol), name
        # published ranges (Panjabi 1991/1992): lumbar body 40-52 mm wide, 30-38 deep; T12 smaller
        lo_w, lo_d = (40, 30) if name.startswith("L") else (36, 28)
        assert lo_w <= v["body_width_mm"] <= 53 and lo_d <= v["body_ap_depth_mm"] <= 38, name
        assert 14 <= v["canal_ap_mm"] <= 21 and 17 <= v["canal_transverse_mm"] <= 29, name


def test_endplates_match_label_map():
    """Fit planes to the top and bottom of each body measured on the label map (vertical chords
    on a ring 75 % of the way to the rim) and compare them with the truth endplates."""
    ph = get_phantom(**FINE)
    for name, v in ph.truth["vertebrae"].items():
        vol = _mask_volume(ph, v["label"])
        o = np.array(v["frame_origin"])
        x, y, z = (np.array(v["axes"][k]) for k in "xyz")
        half_w = chord(vol, o, x) / 2
        half_d = chord(vol, o, y) / 2
        for which, sign in (("superior", 1.0), ("inferior", -1.0)):
            pts = []
            for t in np.linspace(0, 2 * np.pi, 24, endpoint=False):
                c = o + 0.75 * half_w * np.cos(t) * x + 0.75 * half_d * np.sin(t) * y
                if vol.sample([c], order=1, fill=0)[0] < 0.5:
                    continue
                pts.append(c + sign * _first_out(vol, c, sign * z) * z)
            P = np.array(pts)
            n = np.linalg.svd(P - P.mean(0))[2][-1]
            n = n if n @ z > 0 else -n
            tn = np.array(v[f"{which}_endplate"]["normal"])
            assert np.degrees(np.arccos(np.clip(n @ tn, -1, 1))) < 2.0, (name, which)
            # the truth point lies on the measured plane (within a voxel)
            assert abs((np.array(v[f"{which}_endplate"]["point"]) - P.mean(0)) @ n) < 0.6, (name, which)


def test_pedicle_axis_entry_and_bone_length_match_label_map():
    ph = get_phantom(**FINE)
    for name, v in ph.truth["vertebrae"].items():
        vol = _mask_volume(ph, v["label"])
        for side in ("left", "right"):
            p = v["pedicles"][side]
            a = np.array(p["axis"])
            e = np.array(p["axis_entry_point"])
            # just anterior of the entry point is bone, just posterior is not
            assert vol.sample([e + 0.6 * a], order=1, fill=0)[0] > 0.5, (name, side)
            assert vol.sample([e - 0.6 * a], order=1, fill=0)[0] < 0.5, (name, side)
            ts = np.arange(0.5, p["axis_bone_length_mm"] - 0.5, 0.25)
            inside = vol.sample(e[None, :] + ts[:, None] * a[None, :], order=1, fill=0) > 0.5
            assert inside.mean() > 0.9, (name, side, inside.mean())
            far = e + (p["axis_bone_length_mm"] + 0.6) * a
            assert vol.sample([far], order=1, fill=0)[0] < 0.5  # beyond the anterior cortex
            assert 35 <= p["axis_bone_length_mm"] <= 75


def test_pedicle_angles_follow_frame_convention_and_literature():
    t = get_phantom(**DEFAULT_1MM).truth["vertebrae"]
    for name, v in t.items():
        fr = VertebraFrame(origin=v["frame_origin"], axes=[v["axes"][k] for k in "xyz"])
        for side in ("left", "right"):
            p = v["pedicles"][side]
            med, cran = fr.angles_of(p["axis"], side)
            assert med == pytest.approx(p["transverse_angle_deg"], abs=1e-3)
            assert cran == pytest.approx(p["sagittal_angle_deg"], abs=1e-3)
            # the axis points anteriorly (posterior -> anterior)
            assert np.dot(p["axis"], v["axes"]["y"]) < -0.8
    # Zindrick 1987: ~11 deg at L1 rising to ~30 deg at L5; 5-10 deg at T11/T12
    ang = {n: t[n]["pedicles"]["left"]["transverse_angle_deg"] for n in t}
    assert 9 <= ang["L1"] <= 13 and 25 <= ang["L5"] <= 32
    assert all(4 <= ang[n] <= 10 for n in ("T11", "T12"))
    assert ang["L1"] < ang["L2"] < ang["L3"] < ang["L4"] < ang["L5"]
    w = {n: t[n]["pedicles"]["left"]["isthmus_width_mm"] for n in t}
    assert 6.5 <= w["T12"] <= 9.5 and 15 <= w["L5"] <= 20 and w["L1"] < w["L4"] < w["L5"]


def test_hu_ranges_by_tissue():
    ph = get_phantom(**DEFAULT_1MM)
    ct, t = ph.ct, ph.truth
    a = ct.array
    v = t["vertebrae"]["L3"]
    o = np.array(v["frame_origin"])
    x, y, z = (np.array(v["axes"][k]) for k in "xyz")
    offs = np.stack(np.meshgrid(*[np.arange(-3, 4, 1.0)] * 3, indexing="ij"), -1).reshape(-1, 3)

    def mean_at(p):
        return float(ct.sample(p + offs, order=1).mean())

    assert 150 <= mean_at(o) <= 300  # cancellous
    # disc centre between L3 and L4
    o4 = np.array(t["vertebrae"]["L4"]["frame_origin"])
    disc_c = (np.array(v["inferior_endplate"]["point"]) + np.array(t["vertebrae"]["L4"]["superior_endplate"]["point"])) / 2
    assert 65 <= mean_at(disc_c) <= 100
    assert np.linalg.norm(disc_c - o4) > 10
    # CSF in the thecal sac
    csf = o + (v["body_ap_depth_mm"] / 2 + v["canal_ap_mm"] / 2) * y
    assert -5 <= float(ct.sample((csf + offs / 3)).mean()) <= 20
    # muscle: 45 mm to the side of the spinous tip, 15 mm anterior of it
    tip = np.array(v["spinous_tip"])
    assert 35 <= mean_at(tip + 45 * x - 15 * y) <= 65
    # subcutaneous fat at the posterior midline, halfway through the fat layer
    zz, yy = np.array(t["skin"]["posterior_midline_y_at_z"]).T
    zc = float(np.median(zz))
    ysk = float(np.interp(zc, zz, yy))
    fat = np.array([0.0, ysk - 2.0 - t["params"]["fat_mm"] / 2, zc])
    assert -115 <= mean_at(fat) <= -85
    assert -1010 <= mean_at(np.array([0.0, ysk + 6.0, zc])) <= -985  # air behind the back
    # the skin surface is where the truth says: HU crosses -500 within a voxel of it
    ray = np.array([[0.0, yv, zc] for yv in np.arange(ysk - 10, ysk + 10, 0.1)])
    prof = ct.sample(ray, order=1)
    y_cross = ray[int(np.argmax(prof < -500)), 1]
    assert abs(y_cross - ysk) <= 1.0
    # cortex: the brightest voxels on a ray through the anterior body wall (1 mm spacing)
    ray = o[None, :] - np.linspace(0, 25, 101)[:, None] * y[None, :]
    assert 650 <= ct.sample(ray, order=0).max() <= 1250
    # bone labels sit on bone
    bone = a[ph.labels.array > 0]
    assert np.median(bone) > 150


def test_cortex_and_osteoporosis_at_fine_spacing():
    ph = get_phantom(**SMALL)
    o = np.array(ph.truth["vertebrae"]["L4"]["frame_origin"])
    y = np.array(ph.truth["vertebrae"]["L4"]["axes"]["y"])
    ray = o[None, :] - np.linspace(0, 25, 501)[:, None] * y[None, :]
    prof = ph.ct.sample(ray, order=0)
    assert 700 <= prof.max() <= 1200
    assert 150 <= float(np.median(prof[:100])) <= 300
    op = get_phantom(**{**SMALL, "osteoporosis": True})
    prof2 = op.ct.sample(ray, order=0)
    assert 60 <= float(np.median(prof2[:100])) <= 100
    assert prof2.max() < prof.max()
    # thinner cortex: fewer voxels above 400 HU on the ray
    assert np.count_nonzero(prof2 > 400) < np.count_nonzero(prof > 400)
    for n, v in op.truth["vertebrae"].items():
        assert 60 <= v["cancellous_hu"] <= 100


def test_determinism_and_seed_jitter():
    kw = dict(levels="L4-L5", spacing=2.0, fov="spine", noise_hu=10.0)
    a, b = make_phantom(seed=3, **kw), make_phantom(seed=3, **kw)
    assert np.array_equal(a.ct.array, b.ct.array) and np.array_equal(a.labels.array, b.labels.array)
    assert a.truth == b.truth
    c = make_phantom(seed=4, **kw)
    assert not np.array_equal(a.ct.array, c.ct.array)
    wa = a.truth["vertebrae"]["L4"]["body_width_mm"]
    wc = c.truth["vertebrae"]["L4"]["body_width_mm"]
    assert wa != wc and abs(wa - wc) / wa < 0.07  # a few percent
    d = make_phantom(seed=4, jitter=0.0, **kw)
    assert d.truth["vertebrae"]["L4"]["body_width_mm"] == pytest.approx(48.0, abs=0.05)  # Panjabi 1992 L4 table row


@pytest.mark.parametrize("grade,kind", [(1, "wedge"), (2, "biconcave"), (3, "crush"), (2, "wedge")])
def test_fracture_height_loss_in_genant_band(grade, kind):
    ph = get_phantom(levels="T12-L2", spacing=0.8, fov="spine", noise_hu=0.0, ribs=False,
                     fracture=("L1", grade, kind))
    band = {1: (20, 25), 2: (25, 40), 3: (40, 100)}[grade]
    v = ph.truth["vertebrae"]["L1"]
    f = v["fracture"]
    assert f["grade"] == grade and f["type"] == kind
    assert band[0] < f["height_loss_pct"] < band[1]
    # measured on the label map, expected height = mean posterior height of the neighbours
    vol = _mask_volume(ph, v["label"])
    o = np.array(v["frame_origin"])
    y, z = np.array(v["axes"]["y"]), np.array(v["axes"]["z"])
    half = chord(vol, o, y) / 2
    ant, mid, post = (chord(vol, o + off * y, z) for off in (-half + 3, 0.0, half - 3))
    nb = [ph.truth["vertebrae"][n]["posterior_height_mm"] for n in ("T12", "L2")]
    loss = genant_loss_pct(ant, mid, post, float(np.mean(nb)))
    assert band[0] - 1.5 < loss < band[1] + 1.5, (ant, mid, post, nb, loss)
    if kind == "wedge":
        assert ant < mid < post
    if kind == "biconcave":
        assert mid < ant - 3 and mid < post - 3
    if kind == "crush":
        assert post < 0.8 * float(np.mean(nb))
    # unfractured neighbours stay below the Genant threshold
    for n in ("T12", "L2"):
        assert ph.truth["vertebrae"][n]["fracture"]["height_loss_pct"] < 15


def test_several_fractures():
    ph = get_phantom(levels="T12-L3", spacing=1.5, fov="spine", noise_hu=0.0, ribs=False,
                     fracture=[("T12", 1, "wedge"), "L2:3:crush"])
    t = ph.truth["vertebrae"]
    assert (t["T12"]["fracture"]["grade"], t["L2"]["fracture"]["grade"], t["L1"]["fracture"]["grade"]) == (1, 3, 0)
    assert 20 < t["T12"]["fracture"]["height_loss_pct"] < 25 and t["L2"]["fracture"]["height_loss_pct"] > 40
    assert ph.truth["params"]["fractures"] == [["T12", 1, "wedge"], ["L2", 3, "crush"]]
    with pytest.raises(InputError, match="one fracture"):
        make_phantom(levels="L1-L2", fracture="L1:2,L1:3")


def _mask_centroids(ph):
    lab = ph.labels.array
    out = {}
    for n, v in ph.truth["vertebrae"].items():
        idx = np.argwhere(lab == v["label"])
        out[n] = ph.labels.index_to_world(idx.mean(0))
    return out


def test_lordosis_and_scoliosis_visible_in_centroids():
    kw = dict(levels="L1-S1", spacing=2.0, fov="spine", noise_hu=0.0, ribs=False, jitter=0.0)
    flat = get_phantom(lordosis_deg=0.0, **kw)
    lord = get_phantom(lordosis_deg=45.0, **kw)
    sc = get_phantom(lordosis_deg=0.0, scoliosis_deg=30.0, **{**kw, "levels": "T12-S1"})

    def bow_y(ph):  # anterior (-y) bowing of L3 relative to the L1-L5 chord
        c = _mask_centroids(ph)
        return float(c["L3"][1] - (c["L1"][1] + c["L5"][1]) / 2)

    assert abs(bow_y(flat)) < 2.0
    assert bow_y(lord) < -4.0
    n1 = np.array(lord.truth["vertebrae"]["L1"]["superior_endplate"]["normal"])
    ns = np.array(lord.truth["vertebrae"]["S1"]["superior_endplate"]["normal"])
    assert np.degrees(np.arccos(np.clip(n1 @ ns, -1, 1))) == pytest.approx(45.0, abs=1.0)
    c = _mask_centroids(sc)
    apex_dx = c["L2"][0] - (c["L1"][0] + c["L4"][0]) / 2
    assert apex_dx > 3.0  # convex to the patient's left (+x)
    # Cobb angle between the end vertebrae (T12 and L4, stated in the truth)
    assert sc.truth["spine"]["scoliosis_end_vertebrae"] == ["T12", "L4"]
    nt = np.array(sc.truth["vertebrae"]["T12"]["superior_endplate"]["normal"])
    nl = np.array(sc.truth["vertebrae"]["L4"]["inferior_endplate"]["normal"])
    cobb = np.degrees(np.arctan2(nl[0], nl[2]) - np.arctan2(nt[0], nt[2]))
    assert cobb == pytest.approx(30.0, abs=1.0)


def test_axial_rotation_visible_in_label_map():
    kw = dict(levels="L1-L4", spacing=1.0, fov="spine", noise_hu=0.0, ribs=False, jitter=0.0)
    ph = get_phantom(rotation_deg=20.0, scoliosis_deg=20.0, **kw)
    v = ph.truth["vertebrae"]["L2"]  # apex
    lab = ph.labels.array == v["label"]
    idx = np.argwhere(lab)
    pts = ph.labels.index_to_world(idx)
    o = np.array(v["frame_origin"])
    z = np.array(v["axes"]["z"])
    # direction from the body centre to the centroid of the posterior elements (spinous side)
    rel = pts - o
    rel -= np.outer(rel @ z, z)
    post = rel[np.linalg.norm(rel, axis=1) > 30]
    d = post.mean(0)
    ang = np.degrees(np.arctan2(-d[0], d[1]))  # 0 = straight posterior; + = spinous to the right
    assert ang == pytest.approx(20.0, abs=3.0)
    ref = get_phantom(rotation_deg=0.0, scoliosis_deg=20.0, **kw).labels.array
    assert not np.array_equal(ref, ph.labels.array)


def test_ribs_only_on_t11_t12_and_none_without():
    ph = get_phantom(**DEFAULT_1MM)
    t = ph.truth["vertebrae"]
    assert [n for n, v in t.items() if v["rib_bearing"]] == ["T11", "T12"]
    from scipy.ndimage import binary_dilation

    a, lab = ph.ct.array, ph.labels.array
    other_bone = (a > 500) & ~binary_dilation(lab > 0, iterations=2)  # bone that is no vertebra
    idx = np.argwhere(other_bone)
    pts = ph.ct.index_to_world(idx)

    def count_near(level, lateral_min=20.0, lateral_max=45.0):  # rib heads and necks beside the body
        v = t[level]
        o = np.array(v["frame_origin"])
        z = np.array(v["axes"]["z"])
        rel = pts - o
        dz = rel @ z
        lat = np.abs(rel @ np.array(v["axes"]["x"]))
        return int(np.count_nonzero((np.abs(dz) < 12) & (lat > lateral_min) & (lat < lateral_max)))

    assert count_near("T11") > 100 and count_near("T12") > 100
    assert count_near("L1") == 0 and count_near("L2") == 0 and count_near("L3") == 0
    no = get_phantom(**{**DEFAULT_1MM, "ribs": False})
    assert not any(v["rib_bearing"] for v in no.truth["vertebrae"].values())
    other = (no.ct.array > 500) & ~binary_dilation(no.labels.array > 0, iterations=2)
    zs = no.ct.index_to_world(np.argwhere(other))[:, 2]
    assert np.all(zs < np.array(no.truth["vertebrae"]["L4"]["frame_origin"])[2])  # only the ilium remains


def test_t10_is_rib_bearing_when_drawn():
    ph = get_phantom(levels="T10-L1", spacing=2.0, noise_hu=0.0)
    assert [n for n, v in ph.truth["vertebrae"].items() if v["rib_bearing"]] == ["T10", "T11", "T12"]
    assert set(np.unique(ph.labels.array)) == {0, 17, 18, 19, 20}


def test_iliac_crest_lateral_to_l5_s1():
    t = get_phantom(**DEFAULT_1MM).truth
    crest = np.array(t["iliac_crest"]["left"])
    l4, l5, s1 = (np.array(t["vertebrae"][n]["frame_origin"]) for n in ("L4", "L5", "S1"))
    top = crest[np.argmax(crest[:, 2])]
    assert s1[2] < top[2] < l4[2] + 10  # intercristal line near L4-L5 (Tuffier line)
    assert 50 < abs(top[0] - l5[0]) < 110


def _unlabelled_bone_on_line(ph, near, start, direction, length=140.0):
    """True when the line from ``start`` backwards meets bone (> 300 HU) that is no vertebra
    before it reaches air."""
    ts = np.arange(0.0, length, 0.5)
    pts = np.asarray(start)[None, :] - ts[:, None] * np.asarray(direction)[None, :]
    hu = ph.ct.sample(pts, order=0)
    stop = int(np.argmax(hu < -900)) if np.any(hu < -900) else len(ts)
    bone = (hu[:stop] > 300) & (near.sample(pts[:stop], order=0, fill=0.0) == 0)
    return bool(bone.any())


def test_iliac_bone_blocks_some_s1_trajectories():
    from scipy import ndimage

    ph = get_phantom(**DEFAULT_1MM)
    near = ph.labels.with_array(ndimage.binary_dilation(ph.labels.array > 0, iterations=3).astype(np.float32))

    def line(level, side, medial_deg):
        v = ph.truth["vertebrae"][level]
        fr = VertebraFrame(origin=v["frame_origin"], axes=[v["axes"][k] for k in "xyz"])
        m = np.radians(medial_deg)
        sx = -1.0 if side == "left" else 1.0  # towards the midline going anteriorly
        d = fr.axes.T @ np.array([sx * np.sin(m), -np.cos(m), 0.0])  # anterior-going, in the endplate plane
        assert fr.angles_of(d, side)[0] == pytest.approx(medial_deg, abs=1e-3)
        return _unlabelled_bone_on_line(ph, near, v["pedicles"][side]["isthmus_center"], d)

    for side in ("left", "right"):
        assert line("S1", side, 42.0)  # steep convergence: the posterior ilium is in the way
        assert not line("S1", side, 20.0)
        assert not line("L4", side, ph.truth["vertebrae"]["L4"]["pedicles"][side]["transverse_angle_deg"])


def test_lumbar_count_six_has_l6_label():
    ph = get_phantom(levels="L4-S1", spacing=2.0, fov="spine", noise_hu=0.0, lumbar_count=6)
    assert list(ph.truth["vertebrae"]) == ["L4", "L5", "L6", "S1"]
    assert set(np.unique(ph.labels.array)) == {0, 23, 24, 25, 26}


def test_pedicle_scale_narrows_measured_isthmus():
    base = get_phantom(**SMALL)
    narrow = get_phantom(**{**SMALL, "pedicle_scale": 0.6})
    for n in ("L4", "L5"):
        vb, vn = base.truth["vertebrae"][n], narrow.truth["vertebrae"][n]
        assert vn["pedicles"]["left"]["isthmus_width_mm"] == pytest.approx(
            0.6 * vb["pedicles"]["left"]["isthmus_width_mm"], rel=1e-3)
        vol = _mask_volume(narrow, vn["label"])
        c = np.array(vn["pedicles"]["left"]["isthmus_center"])
        _, e_side, _ = _pedicle_dirs(vn, "left")
        assert chord(vol, c, e_side) == pytest.approx(vn["pedicles"]["left"]["isthmus_width_mm"], abs=0.5)


def test_spacing_range_keeps_every_level():
    ph = get_phantom(spacing=3.0, noise_hu=0.0)
    assert np.allclose(ph.ct.spacing, 3.0)
    assert set(np.unique(ph.labels.array)) - {0} == {18, 19, 20, 21, 22, 23, 24, 26}


def test_blur_softens_cortex_but_keeps_labels():
    kw = dict(levels="L4", spacing=0.5, fov="spine", noise_hu=0.0, ribs=False)
    sharp, soft = get_phantom(**kw), get_phantom(blur_mm=1.0, **kw)
    assert np.array_equal(sharp.labels.array, soft.labels.array)
    assert soft.ct.array.max() < sharp.ct.array.max() - 100  # the 1 mm cortex is smeared
    assert soft.truth["params"]["blur_mm"] == 1.0


def test_cropped_field_of_view_marks_cut_vertebra_incomplete():
    full = get_phantom(levels="T12-L2", spacing=2.0, fov="spine", noise_hu=0.0)
    cut = get_phantom(levels="T12-L2", spacing=2.0, fov="spine", noise_hu=0.0, crop_top_mm=30.0)
    assert all(v["complete"] for v in full.truth["vertebrae"].values())
    assert [n for n, v in cut.truth["vertebrae"].items() if not v["complete"]] == ["T12"]
    n_full = np.count_nonzero(full.labels.array == 19)
    n_cut = np.count_nonzero(cut.labels.array == 19)
    assert 0 < n_cut < 0.8 * n_full
    assert cut.truth["vertebrae"]["L1"] == full.truth["vertebrae"]["L1"]
    with pytest.raises(InputError, match="crop"):
        make_phantom(levels="L3", spacing=2.0, fov="spine", crop_top_mm=200.0)


def test_anisotropic_spacing_and_level_list():
    ph = get_phantom(levels=["L3", "L4"], spacing=(1.0, 1.2, 2.5), fov="spine", noise_hu=0.0)
    np.testing.assert_allclose(ph.ct.spacing, [1.0, 1.2, 2.5])
    assert set(np.unique(ph.labels.array)) == {0, 22, 23}
    c = ph.truth["vertebrae"]["L4"]["body_centroid"]
    assert ph.labels.sample([c], order=0)[0] == 23


def test_write_and_load_roundtrip(tmp_path):
    from spineplan.io import read_nifti

    ph = get_phantom(levels="L4-S1", spacing=2.0, noise_hu=5.0)
    paths = write_phantom(ph, tmp_path / "out")
    assert {p.name for p in paths.values()} == {"ct.nii.gz", "labels.nii.gz", "truth.json"}
    ct = read_nifti(paths["ct"])
    lab = read_nifti(paths["labels"])
    assert np.array_equal(np.asarray(ct.array), ph.ct.array)
    assert np.array_equal(np.asarray(lab.array), ph.labels.array)
    np.testing.assert_allclose(ct.affine, ph.ct.affine, atol=1e-4)
    # world coordinates survive: the L5 body centroid lands inside L5 in the re-read label map
    c = ph.truth["vertebrae"]["L5"]["body_centroid"]
    assert lab.sample([c], order=0)[0] == 24
    assert load_truth(paths["truth"]) == json.loads(json.dumps(ph.truth))
    assert load_truth(tmp_path / "out")["format"] == "spineplan.phantom-truth"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files left


def test_load_truth_rejects_bad_files(tmp_path):
    with pytest.raises(InputError, match="No phantom truth"):
        load_truth(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="Cannot read"):
        load_truth(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "spineplan.plan", "version": 1}))
    with pytest.raises(InputError, match="not a spineplan phantom truth"):
        load_truth(other)


def test_bad_parameters_raise_clear_errors():
    with pytest.raises(InputError, match="cannot draw"):
        make_phantom(levels="C3-C5")
    with pytest.raises(InputError, match="Genant"):
        make_phantom(levels="L1-L2", fracture=("L1", 4, "wedge"))
    with pytest.raises(InputError, match="not a drawn vertebra"):
        make_phantom(levels="L3-L4", fracture="L1:2")
    with pytest.raises(InputError, match="spacing"):
        make_phantom(levels="L3-L4", spacing=0.05)


def test_cli_writes_phantom(tmp_path, capsys):
    from spineplan.cli import main

    out = tmp_path / "ph"
    rc = main(["phantom", "-o", str(out), "--levels", "L4-S1", "--spacing", "3", "--fracture", "L4:2:wedge",
               "--fracture", "L5:1:biconcave",
               "--seed", "2", "--no-ribs", "--fov", "spine", "--jitter", "0"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "truth.json" in text and "L4 Genant grade 2" in text and "not a certified medical device" in text
    t = load_truth(out / "truth.json")
    assert t["params"]["seed"] == 2 and t["vertebrae"]["L4"]["fracture"]["grade"] == 2
    assert t["vertebrae"]["L5"]["fracture"]["type"] == "biconcave"
    assert t["params"]["fov"] == "spine" and t["params"]["jitter"] == 0.0 and not t["ribs"]
    rc = main(["phantom", "-o", str(out), "--levels", "L1-L2", "--fracture", "L5:2"])
    assert rc != 0
    assert "not a drawn vertebra" in capsys.readouterr().err
