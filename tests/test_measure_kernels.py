"""The compiled hot loop of the measurement agrees with its numpy formulation, and the tube's
covered fractions are continuous in its parameters (no staircase for the fit to stop on)."""

from __future__ import annotations

import numpy as np


def test_tube_fractions_match_numpy():
    from spineplan.anatomy import _pv

    rng = np.random.default_rng(1)
    dd = rng.uniform(-6, 6, size=(200, 27, 3))
    u, w = np.array([1.0, 0, 0]), np.array([0, 0.6, 0.8])
    for h in (0.35, 1.0):
        args = (dd, u, w, 0.3, -0.2, 4.0, 5.0, 3.0, 4.0, h)
        ia, ma = _pv.fractions(*args)
        ib, mb = _pv._fractions_numpy(*args)
        np.testing.assert_allclose(ia, ib, atol=1e-12)
        np.testing.assert_allclose(ma, mb, atol=1e-12)
        assert 0.05 < ia.mean() < 0.6 and (ma <= ia + 1e-12).all()


def test_tube_area_exact_and_continuous():
    """Over a fine grid the covered fraction integrates to the ellipse's area (pi a b) within 1 %,
    and widening the tube by 0.01 mm changes a boundary voxel's fraction by a small amount (a
    counted-in-or-out sub-sample would jump by 1/S or not move at all)."""
    from spineplan.anatomy import _pv

    step = 1.0
    g = np.arange(-12.0, 12.0, step) + 0.5 * step
    X, Y = np.meshgrid(g, g, indexing="ij")
    dd = np.stack([X.ravel(), Y.ravel(), np.zeros(X.size)], -1)[None]
    ex, ey = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    inside, marrow = _pv.fractions(dd, ex, ey, 0.13, -0.21, 4.5, 7.0, 3.5, 6.0, step)
    assert abs(inside[0] * dd.shape[1] * step ** 2 / (np.pi * 4.5 * 7.0) - 1) < 0.01
    assert abs(marrow[0] * dd.shape[1] * step ** 2 / (np.pi * 3.5 * 6.0) - 1) < 0.01
    # one voxel of 3x3 sub-samples on the tube's edge
    sub = (np.arange(3) + 0.5) / 3 - 0.5
    SX, SY = np.meshgrid(sub, sub, indexing="ij")
    vox = np.stack([4.4 + SX.ravel(), SY.ravel(), np.zeros(9)], -1)[None]
    f = [_pv.fractions(vox, ex, ey, 0.0, 0.0, a, 7.0, a - 1.0, 6.0, 1.0 / 3)[0][0] for a in np.arange(4.2, 4.6, 0.01)]
    steps = np.abs(np.diff(f))
    assert steps.max() < 0.05 and steps.min() > 0.0


def test_tube_normal_equations_match_numpy():
    from spineplan.anatomy import _pv

    rng = np.random.default_rng(2)
    dd = rng.uniform(-6, 6, size=(150, 12, 3))
    vals = rng.normal(200, 80, 150)
    u, w = np.array([0.8, 0.6, 0]), np.array([0, 0, 1.0])
    wts = rng.uniform(0.0, 1.0, 150)
    args = (dd, u, w, -0.4, 0.1, 4.0, 6.0, 3.0, 5.0, 0.5, vals)
    Ga, ra = _pv.normal_equations(*args, wts)
    Gb, rb = _pv._normal_numpy(*args, wts)
    np.testing.assert_allclose(Ga, Gb, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(ra, rb, rtol=1e-12, atol=1e-7)
    assert np.isclose(Ga[0, 0], wts.sum()) and np.allclose(Ga, Ga.T)
    # unit weights: the unweighted normal equations, X'X and X'v, from the fractions themselves
    inside, marrow = _pv._fractions_numpy(*args[:10])
    X = np.c_[np.ones(150), marrow, inside - marrow]
    G1, r1 = _pv.normal_equations(*args, np.ones(150))
    np.testing.assert_allclose(G1, X.T @ X, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(r1, X.T @ vals, rtol=1e-10, atol=1e-6)


def test_edge_model_residuals_match_numpy():
    """The compiled edge-model residuals agree with the numpy formulation on a blurred bone edge,
    and are least at the true edge (within one 0.05 mm trial step)."""
    from spineplan.anatomy import _pv
    from spineplan.anatomy.measure import _line_kernel

    x, pdf, cdf = _line_kernel(np.array([1.0, 1.0, 3.0]), np.array([0.0, 0.0, 1.0]))
    ss = np.arange(0.0, 9.0, 0.1)
    edge = 4.3
    # bone (interior 250 HU, 1 mm shell 700 HU more) to soft tissue (40 HU), blurred by the kernel
    fine = np.arange(-10, 20, 0.1)
    prof = 40.0 + 210.0 * (fine < edge) + 700.0 * ((fine < edge) & (fine >= edge - 1.0))
    vv = np.interp(ss, fine, np.convolve(prof, pdf * 0.1, mode="same"))
    es = edge + np.arange(-2.0, 2.0001, 0.05)
    a = _pv.edge_residuals(ss, vv, es, float(x[0]), float(x[1] - x[0]), pdf, cdf, 0.5)
    b = _pv._edge_residuals_numpy(ss, vv, es, float(x[0]), float(x[1] - x[0]), pdf, cdf, 0.5)
    fin = np.isfinite(b)
    assert (np.isfinite(a) == fin).all() and fin.sum() > 40
    np.testing.assert_allclose(a[fin], b[fin], rtol=1e-9, atol=1e-6 * float(vv @ vv))
    assert abs(es[int(np.argmin(b))] - edge) <= 0.1


def _tube_case(n=300, s=12, seed=3, tilt=False):
    """Voxel values of a noisy elliptic tube (W 7, H 12 mm, shell) on random sub-sampled voxels,
    the inputs of the compiled fit (_pv.pv_cost / nelder_mead_pv)."""
    from spineplan.anatomy import _pv

    rng = np.random.default_rng(seed)
    dc = rng.uniform(-8, 8, size=(n, 3))
    sub = rng.uniform(-0.5, 0.5, size=(s, 3)) * [0.7, 0.7, 2.5]
    dd = np.ascontiguousarray(dc[:, None, :] + sub[None])
    dc = np.ascontiguousarray(dd.mean(axis=1))
    R = float(np.sqrt(((dd - dc[:, None, :]) ** 2).sum(axis=2).max())) * (1 + 1e-9) + 1e-9
    a = np.array([0.0, -1.0, 0.0])
    z = np.array([0.0, 0.0, 1.0])
    u = np.cross(z, a)
    w = np.cross(a, u)
    inside, marrow = _pv._fractions_numpy(dd, u, w, 0.4, -0.3, 3.5, 6.0, 2.5, 5.0, 0.35)
    vals = 30.0 + 150.0 * marrow + 600.0 * (inside - marrow) + rng.normal(0, 20, n)
    wts = rng.uniform(0.2, 1.0, n)
    return dict(dd=dd, dc=dc, R=R, a=a, u=u, w=w, z=z, tilt=tilt, unit=0.05, cortex=1.0, ramp=0.35,
                vals=vals, wts=wts, vv2=float(wts @ (vals * vals)))


def test_skipping_normal_equations_match_the_full_loop():
    """_pv.normal_fast (voxels wholly inside or outside an edge ramp skipped) gives the normal
    equations of the full sub-sample loop, for tubes from thin to wide."""
    from spineplan.anatomy import _pv

    c = _tube_case()
    for W, H in ((3.0, 5.0), (7.0, 12.0), (12.0, 16.0)):
        args = (c["u"], c["w"], 0.3, -0.2, 0.5 * W, 0.5 * H, 0.5 * W - 1.0, 0.5 * H - 1.0, 0.35, c["vals"], c["wts"])
        Ga, ra = _pv.normal_fast(c["dd"], c["dc"], c["R"], *args)
        Gb, rb = _pv._normal_numpy(c["dd"], *args)
        np.testing.assert_allclose(Ga, Gb, rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(ra, rb, rtol=1e-10, atol=1e-6)


def test_compiled_nelder_mead_is_scipys():
    """The compiled Nelder-Mead of the tube fit takes scipy's steps: from the same simplex it ends
    at scipy's point and cost (tolerances 1e-6 mm / relative 1e-9), and the fit finds the tube's
    width and height within 0.3 mm."""
    from scipy.optimize import minimize

    from spineplan.anatomy import _pv

    for tilt in (False, True):
        c = _tube_case(tilt=tilt)
        extra = (1.0, 7.5, 11.0, 0.7, 1.05)  # s2, W0, H0, sig_s, sig_t
        keys = ("dd", "dc", "R", "a", "u", "w", "z", "tilt", "unit", "cortex", "ramp", "vals", "wts", "vv2")
        args = tuple(c[k] for k in keys) + extra
        x0 = np.array([7.5, 11.0, 0.0, 0.0] + ([0.0, 0.0] if tilt else []))
        steps = [0.42, 0.42, 0.28, 0.28] + ([0.8, 0.8] if tilt else [])
        sim = x0 + np.vstack([np.zeros(len(steps)), np.diag(steps)])
        cost = lambda p: _pv.pv_cost(np.asarray(p, float), *args)
        fatol = 1e-4 * cost(x0)
        ref = minimize(cost, x0, method="Nelder-Mead",
                       options={"initial_simplex": sim.copy(), "xatol": 0.02, "fatol": fatol, "maxiter": 400})
        x, f, nfev = _pv.nelder_mead_pv(sim.copy(), 0.02, fatol, 400, *args)
        np.testing.assert_allclose(x, ref.x, atol=1e-6)
        assert abs(f - ref.fun) <= 1e-9 * abs(ref.fun) and nfev == ref.nfev
        assert abs(x[0] - 7.0) < 0.3 and abs(x[1] - 12.0) < 0.3


def test_trilinear_is_map_coordinates_order_1():
    """_pv.trilinear = scipy.ndimage.map_coordinates(order=1, mode="constant") inside, at the
    borders and outside, also on an axis one voxel long."""
    from scipy.ndimage import map_coordinates

    from spineplan.anatomy import _pv

    rng = np.random.default_rng(0)
    for shape in ((5, 6, 7), (1, 4, 4), (2, 2, 2)):
        arr = rng.normal(size=shape).astype(np.float32)
        idx = rng.uniform(-1.5, np.array(shape)[:, None] + 0.5, (3, 5000))
        idx[:, :4] = np.array([[0, 0, 0], [s - 1 for s in shape], [-1e-9, 0, 0], [shape[0] - 1 + 1e-9, 0, 0]]).T
        np.testing.assert_allclose(_pv.trilinear(arr, np.ascontiguousarray(idx), -7.0),
                                   map_coordinates(arr, idx, order=1, mode="constant", cval=-7.0), atol=1e-6)


def test_section_areas_and_mirror_scores_match_scipy():
    """The compiled soft section areas (least-section direction) and mirror scores (mid-sagittal
    plane) equal their scipy formulations (map_coordinates, ndimage.label) on a smoothed
    off-centre blob with a hole; a section missing the blob is inf."""
    from scipy.ndimage import gaussian_filter, label, map_coordinates

    from spineplan.anatomy import _pv

    m = np.zeros((30, 32, 20), np.float32)
    m[8:20, 10:25, 4:16] = 1.0
    m[12:15, 14:18, :] = 0.0
    m[22:26, 5:9, 6:12] = 1.0  # a separate piece
    vol = gaussian_filter(m, 1.2)
    g = np.arange(-12.0, 12.01, 1.0)
    mid = len(g) // 2
    rng = np.random.default_rng(5)
    K, T = 6, 3
    base = np.ascontiguousarray(np.array([14.0, 17.0, 10.0]) + rng.normal(0, 3, (K, T, 3)))
    base[-1] += 200.0  # far outside: no section
    U = np.ascontiguousarray(rng.normal(size=(K, 3)))
    W = np.ascontiguousarray(rng.normal(size=(K, 3)))
    got = _pv.section_areas(vol, base, U, W, g, 0.3, mid)
    su, sw = np.meshgrid(g, g, indexing="ij")
    for k in range(K):
        want = 0.0
        for t in range(T):
            idx = base[k, t][:, None, None] + su[None] * U[k][:, None, None] + sw[None] * W[k][:, None, None]
            v = map_coordinates(vol, idx.reshape(3, -1), order=1, mode="constant").reshape(su.shape)
            sec = v >= 0.3
            lab, _ = label(sec)
            c = lab[mid, mid]
            if c == 0:
                on = np.argwhere(sec)
                if len(on) == 0:
                    want = np.inf
                    break
                c = lab[tuple(on[np.argmin(np.sum((on - mid) ** 2, axis=1))])]
            want += float(np.clip((v - 0.5) / 0.4 + 0.5, 0.0, 1.0)[lab == c].sum())
        assert (np.isinf(want) and np.isinf(got[k])) or abs(got[k] - want) < 1e-3 * max(want, 1.0)
    assert np.isinf(got[-1]) and np.isfinite(got[:-1]).sum() >= 3
    # mirror scores
    pts_idx = np.argwhere(m > 0).astype(float)
    c0 = pts_idx.mean(axis=0)
    ax, ay = np.array([1.0, 0.1, 0.0]), np.array([-0.1, 1.0, 0.05])
    dx, dy = (pts_idx - c0) @ ax, (pts_idx - c0) @ ay
    th, offs = np.radians([-20.0, 0.0, 7.0]), np.array([-1.0, 0.5])
    got = _pv.mirror_scores(vol, np.ascontiguousarray(pts_idx), dx, dy, ax, ay, th, offs)
    for i, t in enumerate(th):
        n = np.cos(t) * ax + np.sin(t) * ay
        for j, o in enumerate(offs):
            mir = pts_idx - 2.0 * (np.cos(t) * dx + np.sin(t) * dy - o)[:, None] * n
            want = map_coordinates(vol, mir.T, order=1, mode="constant").mean()
            assert abs(got[i, j] - want) < 1e-6
