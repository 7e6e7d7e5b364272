"""DRR renderer: exact (Siddon) mode against analytic chords, fast mode against exact, metal, noise."""

import numpy as np
import pytest

from spineplan.errors import InputError
from spineplan.fluoro.drr import AttenuationVolume, add_noise, hu_to_mu, render, to_display
from spineplan.fluoro.geometry import CArm, Detector, Pose
from spineplan.volume import Volume

MU0 = 0.02
# 40 x 30 x 20 voxels of 1.0 x 1.5 x 2.0 mm, i axis flipped (x = 20 - i): world box
# x in [-19.5, 20.5], y in [-25.75, 19.25], z in [-31, 9] (mm)
AFFINE = np.array([[-1.0, 0, 0, 20.0], [0, 1.5, 0, -25.0], [0, 0, 2.0, -30.0], [0, 0, 0, 1]])
BOX_LO = np.array([-19.5, -25.75, -31.0])
BOX_HI = np.array([20.5, 19.25, 9.0])
BOX_CENTRE = (BOX_LO + BOX_HI) / 2


def _uniform_att():
    return AttenuationVolume.from_mu(np.full((40, 30, 20), MU0, np.float32), AFFINE)


def _chords_world(origins, dirs, lo, hi):
    """Independent world-space slab chord lengths (numpy) of rays through an axis-aligned box."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ta = (lo - origins) / dirs
        tb = (hi - origins) / dirs
    t0 = np.nanmax(np.minimum(ta, tb), axis=-1)
    t1 = np.nanmin(np.maximum(ta, tb), axis=-1)
    return np.clip(t1 - np.maximum(t0, 0), 0, None)


def test_uniform_box_central_and_offaxis_rays_by_hand():
    att = _uniform_att()
    carm = CArm(Detector(sdd_mm=1000.0, width_px=65, height_px=65, pixel_mm=1.0), Pose.from_carm(BOX_CENTRE, 0, 0))
    img = render(att, carm, mode="exact")
    # principal ray (pixel 32, 32) crosses the 45 mm depth of the box along y
    assert img[32, 32] == pytest.approx(MU0 * 45.0, rel=1e-6)
    # 10 px (10 mm at the detector) to the right: tan = 10/1000, exits through the back face
    assert img[32, 42] == pytest.approx(MU0 * 45.0 * np.sqrt(1 + 0.01 ** 2), rel=1e-6)
    fast = render(att, carm, mode="fast")
    assert fast[32, 32] == pytest.approx(MU0 * 45.0, rel=1e-3)


def test_uniform_box_oblique_view_matches_analytic_chords():
    att = _uniform_att()
    carm = CArm(Detector(sdd_mm=1000.0, width_px=48, height_px=40, pixel_mm=6.0),
                Pose.from_carm(BOX_CENTRE + [3.0, -2.0, 4.0], 10.0, 30.0, sid_mm=300.0))
    o, d = carm.rays()
    expected = MU0 * _chords_world(o, d, BOX_LO, BOX_HI)
    assert (expected == 0).sum() > 50 and (expected > 0).sum() > 500  # some rays miss the box
    exact = render(att, carm, mode="exact")
    np.testing.assert_allclose(exact, expected, atol=2e-5)
    fast = render(att, carm, mode="fast")
    hit = expected > 0
    assert np.abs(fast - expected)[hit].mean() / expected[hit].mean() < 0.01


def test_single_voxel_diagonal_chord():
    mu = np.zeros((5, 5, 5), np.float32)
    mu[2, 2, 2] = 1.0
    aff = np.diag([1.0, 1.5, 2.0, 1.0])
    att = AttenuationVolume.from_mu(mu, aff)
    centre = np.array([2.0, 3.0, 4.0])  # world centre of voxel (2, 2, 2)
    det = Detector(sdd_mm=1000.0, width_px=3, height_px=3, pixel_mm=0.01)
    # along x: the voxel is 1.0 mm wide; along the in-plane diagonal (1, 1.5): through two corners
    for beam, chord in [([1.0, 0, 0], 1.0), ([1.0, 1.5, 0], np.hypot(1.0, 1.5)), ([0, 0, 1.0], 2.0)]:
        up = [0, 0, 1.0] if beam[2] == 0 else [0, 1.0, 0]
        carm = CArm(det, Pose.from_beam(centre, beam, up_lps=up, sid_mm=500.0))
        assert render(att, carm, mode="exact")[1, 1] == pytest.approx(chord, rel=1e-6)


def test_fast_agrees_with_exact_on_structured_volume():
    rng = np.random.default_rng(1)
    from scipy.ndimage import gaussian_filter

    mu = gaussian_filter(rng.random((60, 50, 40)), 2.0).astype(np.float32)
    mu = np.where(mu > 0.5, mu * 0.06, mu * 0.02).astype(np.float32)
    att = AttenuationVolume.from_mu(mu, np.diag([0.8, 0.8, 1.6, 1.0]))
    centre = att.centre_lps()
    for o, a in [(0, 0), (15, 70)]:
        carm = CArm(Detector.square(96, field_mm=120.0), Pose.from_carm(centre, o, a, sid_mm=400.0))
        ex = render(att, carm, mode="exact")
        hit = ex > 0
        fa = render(att, carm, mode="fast")
        mad = np.abs(fa - ex)[hit].mean() / ex[hit].mean()
        assert mad < 0.01, (o, a, mad)
        # trilinear sampling integrates a smoothed field: close, but not the voxel model
        fl = render(att, carm, mode="fast", sampling="linear")
        assert np.abs(fl - ex)[hit].mean() / ex[hit].mean() < 0.05


def test_hu_model_uses_nist_values():
    # NIST SRD 126 mu/rho (cm^2/g) at 60 keV: water 0.2059; cortical bone 0.3148 (rho 1.92)
    mu_w60 = 0.2059 / 10
    mu_b60 = 0.3148 * 1.92 / 10
    # bone's CT number at 70 keV, log-log between the 60 and 80 keV table rows
    f = np.log(70 / 60) / np.log(80 / 60)
    w70 = np.exp(np.log(0.2059) + f * np.log(0.1837 / 0.2059))
    b70 = np.exp(np.log(0.3148) + f * np.log(0.2229 / 0.3148)) * 1.92
    hu_bone = 1000 * (b70 / w70 - 1)
    assert 1500 < hu_bone < 1750  # cortical bone's usual CT number
    mu = hu_to_mu([-1000.0, -2048.0, -500.0, 0.0, hu_bone, hu_bone / 2], 60.0)
    np.testing.assert_allclose(mu, [0, 0, mu_w60 / 2, mu_w60, mu_b60, (mu_w60 + mu_b60) / 2], rtol=1e-4)
    # lower energy: bone attenuates relatively more (photo-electric effect)
    lo = hu_to_mu([0.0, 1000.0], 40.0)
    hi = hu_to_mu([0.0, 1000.0], 80.0)
    assert lo[1] / lo[0] > hi[1] / hi[0]
    with pytest.raises(InputError):
        hu_to_mu([0.0], 10.0)


def test_from_ct_and_replace_keeps_box_consistent():
    from dataclasses import replace

    arr = np.full((10, 12, 14), -1000, np.int16)
    arr[3:6, 4:9, 2:5] = 400
    att = AttenuationVolume.from_ct(Volume(arr, np.eye(4)))
    np.testing.assert_allclose(att.box[0], [2.5, 3.5, 1.5])
    np.testing.assert_allclose(att.box[1], [5.5, 8.5, 4.5])
    small = replace(att, mu=np.ones((2, 2, 2), np.float32))
    np.testing.assert_allclose(small.box[1], [1.5, 1.5, 1.5])


def test_metal_screw_chords_by_hand():
    from spineplan.fluoro.metal import as_metal

    att = AttenuationVolume.from_mu(np.zeros((10, 10, 10), np.float32), np.eye(4))
    iso = np.array([4.5, 4.5, 4.5])
    pix = 0.5
    carm = CArm(Detector(sdd_mm=1000.0, width_px=41, height_px=41, pixel_mm=pix), Pose.from_carm(iso, 0, 0))
    mu_ti = 0.7661 * 4.43 / 10  # NIST Ti mu/rho at 60 keV x Ti-6Al-4V density, 1/mm
    r = 3.25
    # transverse screw (along x) through the isocentre
    screws = [{"entry": (iso - [20, 0, 0]).tolist(), "tip": (iso + [20, 0, 0]).tolist(), "diameter_mm": 6.5}]
    img = render(att, carm, mode="exact", metal=screws)
    assert img[20, 20] == pytest.approx(mu_ti * 2 * r, rel=1e-6)
    # ray k pixels below the centre: angle phi, passes the axis at distance 600 sin(phi)
    k = 6
    phi = np.arctan(k * pix / 1000.0)
    delta = 600 * np.sin(phi)
    assert img[20 + k, 20] == pytest.approx(mu_ti * 2 * np.sqrt(r * r - delta * delta), rel=1e-6)
    assert img[20 + 15, 20] == 0.0  # misses (600 * tan > r)
    # a screw along the beam: the central ray runs its whole 40 mm length (shaft only) ...
    along = {"screws": [{"entry": (iso - [0, 20, 0]).tolist(), "tip": (iso + [0, 20, 0]).tolist(),
                         "diameter_mm": 6.5}]}
    shaft = as_metal(along, heads=False)
    assert render(att, carm, mode="fast", metal=shaft)[20, 20] == pytest.approx(mu_ti * 40.0, rel=1e-6)
    # ... and with its head, 5 mm of neck (solid) and a 15 mm tulip at 60 % of titanium's attenuation
    assert render(att, carm, mode="fast", metal=along)[20, 20] == pytest.approx(mu_ti * (40.0 + 5.0 + 0.6 * 15.0),
                                                                                rel=1e-6)
    # a rod (polyline) of two collinear segments = one cylinder, also where the joint is on the ray
    for joint in ([7.0, 0, 0], [0.0, 0, 0]):
        rod = [{"points": [(iso - [20, 0, 0]).tolist(), (iso + joint).tolist(), (iso + [20, 0, 0]).tolist()],
                "diameter_mm": 5.5}]
        assert render(att, carm, mode="exact", metal=rod)[20, 20] == pytest.approx(mu_ti * 5.5, rel=1e-6)
    with pytest.raises(InputError):
        as_metal([{"entry": [0, 0, 0]}])


def test_noise_statistics():
    li = np.full((200, 200), 1.0, np.float32)
    noisy = add_noise(li, 1e5, rng=0)
    # Poisson: var(-log(I/I0)) = 1 / (I0 e^-L)
    assert abs(float(noisy.mean()) - 1.0) < 1e-3
    assert float(noisy.std()) == pytest.approx(np.sqrt(np.e / 1e5), rel=0.05)
    g = add_noise(li, {"gaussian": 0.05}, rng=1)
    assert float(g.std()) == pytest.approx(0.05, rel=0.05)
    with pytest.raises(InputError):
        add_noise(li, {"bogus": 1})


def test_display_bone_dark():
    li = np.zeros((50, 50), np.float32)
    li[10:40, 10:40] = 2.0
    li[20:30, 20:30] = 5.0
    img = to_display(li)
    assert img.dtype == np.uint8
    assert img[25, 25] < img[15, 15] < img[2, 2]
    assert to_display(li, invert=False)[25, 25] > to_display(li, invert=False)[15, 15]


@pytest.fixture(scope="module")
def abdomen_att(data_file):
    from spineplan.io import read_nifti

    return AttenuationVolume.from_ct(read_nifti(data_file("totalseg_example_abdomen/example_ct.nii.gz")))


def test_fast_vs_exact_real_abdomen(abdomen_att):
    centre = abdomen_att.centre_lps()
    for o, a in [(0, 0), (0, 90), (-10, 30)]:
        carm = CArm(Detector.square(128), Pose.from_carm(centre, o, a))
        ex = render(abdomen_att, carm, mode="exact")
        fa = render(abdomen_att, carm, mode="fast")
        hit = ex > 0
        assert hit.mean() > 0.5
        assert np.abs(fa - ex)[hit].mean() / ex[hit].mean() < 0.01
        fl = render(abdomen_att, carm, mode="fast", sampling="linear")
        assert np.abs(fl - ex)[hit].mean() / ex[hit].mean() < 0.02
        # a real abdomen: several (1/mm x mm) units of attenuation through the body
        assert 2.0 < float(np.median(ex[hit])) < 20.0


def test_drr_right_way_up_on_a_las_grid():
    """Bone markers at the patient's left, head and front land where a surgeon expects them."""
    # LAS-stored grid (like the chest NIfTI): i runs to the patient's right, j to anterior
    aff = np.array([[-2.0, 0, 0, 60.0], [0, -2.0, 0, 60.0], [0, 0, 2.0, -60.0], [0, 0, 0, 1]])
    hu = np.full((60, 60, 60), 0, np.int16)
    ct = Volume(hu, aff)

    def put(xyz):
        i, j, k = np.round(ct.world_to_index(xyz)).astype(int)
        hu[i - 2:i + 3, j - 2:j + 3, k - 2:k + 3] = 1500

    put([30.0, 0.0, 0.0])  # patient's left
    put([0.0, 0.0, 35.0])  # head
    put([0.0, -30.0, -20.0])  # anterior and a little inferior
    att = AttenuationVolume.from_ct(Volume(hu, aff))
    det = Detector.square(101, field_mm=200.0)
    ap = render(att, CArm(det, Pose.from_carm([0, 0, 0], 0, 0)), mode="exact")
    base = np.median(ap)
    rows, cols = np.nonzero(ap > base + 0.05)
    # AP: left marker right of centre, head marker above centre (row < 50)
    assert cols.max() > 70 and rows.min() < 30
    assert ap[50, 50 + int(round(30 * 1000 / 600 / (200 / 101)))] > base + 0.1  # left marker on the right
    assert ap[50 - int(round(35 * 1000 / 600 / (200 / 101))), 50] > base + 0.1  # head at the top
    lat = render(att, CArm(det, Pose.from_carm([0, 0, 0], 0, 90)), mode="exact")
    # LAT (detector on the left): anterior marker to the right of centre, below the head marker
    u_ant = 50 + 30 * 1000 / 600 / (200 / 101)
    v_ant = 50 + 20 * 1000 / 600 / (200 / 101)
    assert lat[int(round(v_ant)), int(round(u_ant))] > np.median(lat) + 0.1


def test_needle_from_plan_access():
    att = AttenuationVolume.from_mu(np.zeros((4, 4, 4), np.float32), np.eye(4))
    iso = np.array([1.5, 1.5, 1.5])
    carm = CArm(Detector(sdd_mm=1000.0, width_px=21, height_px=21, pixel_mm=0.5), Pose.from_carm(iso, 0, 0))
    plan = {"access": [{"level": "L1", "side": "left", "skin": (iso - [30, 0, 0]).tolist(),
                        "entry": (iso - [5, 0, 0]).tolist(), "target": (iso + [20, 0, 0]).tolist(), "gauge": 11}]}
    img = render(att, carm, mode="exact", metal=plan)
    mu_fe = 1.205 * 8.0 / 10  # NIST Fe mu/rho at 60 keV x 316L density, 1/mm
    assert img[10, 10] == pytest.approx(mu_fe * 3.05, rel=1e-6)  # 11 G outer diameter (ISO 9626)


def test_exact_mode_matches_brute_force_integration_on_random_volume():
    """Siddon against an independent fine Riemann sum of the voxel field (voxel (i, j, k) is the
    cube of half-width 0.5 around index (i, j, k), as in Volume.index_to_world)."""
    rng = np.random.default_rng(7)
    mu = rng.random((17, 13, 11)).astype(np.float32) * 0.05
    aff = np.array([[0.9, 0.1, 0, -5.0], [0, -1.3, 0.2, 8.0], [0.05, 0, 1.7, -3.0], [0, 0, 0, 1]])  # oblique grid
    vol = Volume(mu, aff, modality="MU")
    att = AttenuationVolume.from_mu(mu, aff)
    centre = vol.index_to_world(np.array([8.0, 6.0, 5.0]))
    carm = CArm(Detector(sdd_mm=800.0, width_px=9, height_px=7, pixel_mm=4.0),
                Pose.from_carm(centre, 23.0, -37.0, sid_mm=200.0))
    exact = render(att, carm, mode="exact")
    o, d = carm.rays()
    t = np.linspace(0.0, 400.0, 400001)
    dt = t[1] - t[0]
    for v, u in [(3, 4), (0, 0), (6, 8), (2, 6)]:
        pts = o[v, u] + (t[:, None] + dt / 2) * d[v, u]
        idx = np.floor(vol.world_to_index(pts) + 0.5).astype(int)
        ok = np.all((idx >= 0) & (idx < np.array(mu.shape)), axis=1)
        vals = np.zeros(len(pts))
        vals[ok] = mu[idx[ok, 0], idx[ok, 1], idx[ok, 2]]
        assert exact[v, u] == pytest.approx(vals.sum() * dt, rel=5e-4, abs=1e-5)
    assert (exact > 0).sum() > 40


def test_metal_chords_match_brute_force_on_oblique_rays():
    from spineplan.fluoro.metal import as_metal

    att = AttenuationVolume.from_mu(np.zeros((2, 2, 2), np.float32), np.eye(4))
    iso = np.array([0.0, 0.0, 0.0])
    carm = CArm(Detector(sdd_mm=1000.0, width_px=41, height_px=41, pixel_mm=1.0), Pose.from_carm(iso, 17.0, 28.0))
    cyl = [{"entry": [-12.0, 5.0, 9.0], "tip": [14.0, -20.0, -6.0], "diameter_mm": 6.5},
           {"points": [[-10.0, 10.0, -15.0], [0.0, 12.0, 0.0], [8.0, 9.0, 20.0]], "diameter_mm": 5.5}]
    img = render(att, carm, mode="exact", metal=cyl)
    met = as_metal(cyl)
    p0, p1, r, mu = met.arrays(60.0)
    o, d = carm.rays()
    t = np.linspace(555.0, 645.0, 90001)  # every cylinder (heads too) lies within 40 mm of the isocentre
    dt = t[1] - t[0]
    hits = 0
    for v in range(2, 41, 6):
        for u in range(2, 41, 6):
            pts = o[v, u] + (t[:, None] + dt / 2) * d[v, u]
            total = 0.0
            for a, b, rad, m in zip(p0, p1, r, mu):
                ax = (b - a) / np.linalg.norm(b - a)
                s = (pts - a) @ ax
                perp = np.linalg.norm((pts - a) - s[:, None] * ax, axis=1)
                inside = (perp <= rad) & (s >= 0) & (s < np.linalg.norm(b - a))
                total += m * inside.sum() * dt
            hits += total > 0
            assert img[v, u] == pytest.approx(total, abs=2e-3 + 1e-3 * total)
    assert hits > 10


def test_rod_sits_in_the_drawn_tulips_on_a_lateral_view():
    """The plan's rod runs through the screw heads (spineplan.plan.rods.screw_head, 12 mm above the
    entry): drawn with their tulips, the metal is continuous from each screw's tip up to the rod
    and beyond it to the tulip's top; without heads there is a gap between entry and rod."""
    from spineplan.fluoro.drr import metal_image
    from spineplan.fluoro.metal import TULIP_TOP_MM
    from spineplan.plan.model import Screw
    from spineplan.plan.rods import screw_head

    iso = np.array([0.0, 0.0, 0.0])
    # two screws pointing anterior (entry posterior, +y), 30 mm apart along z, and the rod through their heads
    screws = [Screw(level=lvl, side="left", entry=[0.0, 10.0, z], tip=[0.0, -35.0, z], diameter_mm=6.5,
                    length_mm=45.0) for lvl, z in (("L3", -15.0), ("L4", 15.0))]
    heads = [screw_head(s) for s in screws]
    rod = {"points": [(heads[0] - [0, 0, 5.0]).tolist(), (heads[1] + [0, 0, 5.0]).tolist()], "diameter_mm": 5.5}
    plan = {"screws": [s.to_dict() for s in screws], "rods": [rod]}
    carm = CArm(Detector(sdd_mm=1000.0, width_px=161, height_px=161, pixel_mm=1.0), Pose.from_carm(iso, 0, 90))
    from spineplan.fluoro.metal import as_metal

    with_heads = metal_image(carm, plan)
    shaft_only = metal_image(carm, as_metal(plan, heads=False))
    for s in screws:
        entry, tip = np.asarray(s.entry), np.asarray(s.tip)
        out = (entry - tip) / np.linalg.norm(entry - tip)
        # pixels along the projected screw axis from the tip (+2 mm) to 1 mm below the tulip's top
        pts = tip + out * np.linspace(2.0, np.linalg.norm(entry - tip) + TULIP_TOP_MM - 1.0, 200)[:, None]
        uv = np.rint(carm.project(pts)).astype(int)
        vals = with_heads[uv[:, 1], uv[:, 0]]
        assert vals.min() > 0.0  # no gap between bone screw, tulip and rod
        gap = shaft_only[uv[:, 1], uv[:, 0]]
        assert (gap == 0.0).sum() > 5  # (without the head the rod floats above the entry)
