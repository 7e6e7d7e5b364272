"""Pictures for the reports: virtual fluoroscopy with the planned metal, a 3D view of the spine
with screws, rods, needles and incision marks, and a simple picture of the operated region for
the patient.

Every function returns PNG bytes (ready to embed in HTML or a PDF) and can also write the file.

- :func:`fluoro_pictures`: AP and lateral virtual fluoroscopy (DRR, :mod:`spineplan.fluoro`)
  with the screws, rods and needles at their true size and the vertebra names and implant axes
  drawn over them (orange = patient's left, blue = right).
- :func:`spine_3d_picture`: surface rendering of the vertebrae (marching cubes of the label map,
  downsampled to :data:`MESH_VOXEL_MM`) with the implants, a translucent patch of the skin over
  the operated levels and the incisions marked on it in red; seen from behind-and-left and from
  the left side.
- :func:`patient_picture`: a figure seen from behind with the operated region boxed, and the
  patient's own back from the CT (body outline, spine, treated levels, incision marks).

The pictures are simulations from the CT and the plan; they carry the research-use note.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from spineplan.fluoro.metal import TULIP_TOP_MM
from spineplan.typing import TypePath

#: Colours: patient-left implants (orange), right (blue), needles (green), incisions (red),
#: bone, treated levels.
LEFT = "#ff8c00"
RIGHT = "#00a6e6"
NEEDLE = "#2ca02c"
INCISION = "#d62728"
BONE = "#e8dcc0"
TREATED = "#f4a340"
#: Voxel size (mm) of the vertebra meshes and of the skin patch in the 3D picture.
MESH_VOXEL_MM = 2.5
SKIN_VOXEL_MM = 5.0
#: Gaussian smoothing (voxels) of the masks before marching cubes.
MESH_SMOOTH_VOXELS = 0.7
#: Skin patch margin around the incisions and needle skin points (mm).
SKIN_PATCH_MARGIN_MM = 45.0
#: Detector size (pixels) of the virtual fluoroscopy pictures (field ~30 cm).
FLUORO_PX = 384
NOTE = "Simulated from the CT and the plan. Research software, not a medical device."


def _mpl():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _png(fig, path: TypePath | None, dpi: int) -> bytes:
    plt = _mpl()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        from spineplan._atomic import write_bytes

        write_bytes(path, data)
    return data


def _array_png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _treated_levels(plan) -> list[str]:
    from spineplan.levels import sort_levels

    return sort_levels({s.level for s in plan.screws} | {a.level for a in plan.access})


# --------------------------------------------------------------------------- fluoroscopy
def fluoro_pictures(ct, spine, plan, *, size_px: int = FLUORO_PX, enhance: float = 0.6,
                    out_dir: TypePath | None = None) -> dict[str, dict]:
    """AP and lateral virtual fluoroscopy with the plan's metal.

    Returns ``{"AP": {"png": bytes, "info": {...C-arm angles...}, "image": uint8 RGB}, "LAT": {...}}``;
    with ``out_dir`` also writes ``fluoro_ap.png`` and ``fluoro_lat.png`` there."""
    from spineplan.fluoro.drr import AttenuationVolume, render, to_display
    from spineplan.fluoro.geometry import Detector
    from spineplan.fluoro.overlay import draw_overlay, view_title
    from spineplan.fluoro.views import named_view

    att = AttenuationVolume.from_ct(ct)
    empty = AttenuationVolume(np.zeros((2, 2, 2), np.float32), ct.affine, energy_kev=att.energy_kev)  # metal only
    # centre the C-arm on every planned implant (screws and needles), not only the screws
    pts = [p for s in plan.screws for p in (s.entry, s.tip)] + [p for a in plan.access for p in (a.entry, a.target)]
    centring = None
    if pts:  # one pseudo-screw across the implants' bounding box: the view centres on its middle
        pts = np.asarray(pts, float)
        centring = {"screws": [{"entry": pts.min(axis=0).tolist(), "tip": pts.max(axis=0).tolist()}]}
    out: dict[str, dict] = {}
    for view in ("AP", "LAT"):
        carm, info = named_view(view, ct, spine=spine, plan=centring, detector=Detector.square(size_px))
        # anatomy and metal separately: the window is set on the anatomy, and metal denser than
        # the densest bone is shown black (as on a C-arm monitor)
        li0 = render(att, carm, mode="fast", sampling="linear")
        li = li0 + render(empty, carm, mode="fast", metal=plan)
        h, w = li0.shape
        centre = li0[h // 4: h - h // 4, w // 4: w - w // 4]
        vals = centre[centre > 1e-3]
        if vals.size:
            li = np.minimum(li, 1.05 * float(np.percentile(vals, 99.5)))
        img = to_display(li, enhance=enhance)
        img = draw_overlay(img, carm, spine=spine, metal=plan, title=view_title(info),
                           centre_lps=info["isocentre_lps"])
        png = _array_png(img)
        if out_dir is not None:
            from spineplan._atomic import write_bytes

            write_bytes(Path(out_dir) / f"fluoro_{view.lower()}.png", png)
        out[view] = {"png": png, "info": info, "image": img}
    return out


# --------------------------------------------------------------------------- 3D
def _downsampled(vol, factor: int):
    """Array and index->LPS affine of ``vol`` taken every ``factor`` voxels."""
    a = np.asarray(vol.array)[::factor, ::factor, ::factor]
    aff = vol.affine.copy()
    aff[:3, :3] = aff[:3, :3] * factor
    return a, aff


def _mesh(mask: np.ndarray, affine: np.ndarray):
    """Triangles (T, 3, 3) in LPS of a bool mask's surface (marching cubes, padded so it closes)."""
    from skimage.measure import marching_cubes

    from scipy.ndimage import gaussian_filter

    if mask.sum() < 8:
        return None
    # a light smoothing (MESH_SMOOTH_VOXELS) removes the voxel staircase without moving the surface
    m = gaussian_filter(np.pad(mask.astype(np.float32), 2), MESH_SMOOTH_VOXELS)
    verts, faces, _, _ = marching_cubes(m, 0.5)
    verts = verts - 2.0  # the padding
    xyz = verts @ affine[:3, :3].T + affine[:3, 3]
    return xyz[faces]


def _shade(tris: np.ndarray, colour, light=(0.3, 0.8, 0.5)) -> np.ndarray:
    from matplotlib.colors import to_rgb

    n = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)
    lv = np.asarray(light, float)
    lv /= np.linalg.norm(lv)
    k = 0.45 + 0.55 * np.abs(n @ lv)
    return np.clip(np.asarray(to_rgb(colour))[None, :] * k[:, None], 0, 1)


def _skin_patch(ct, plan, skin_mask=None):
    """Triangles of the skin surface over the operated region (posterior half of the body)."""
    pts = [np.asarray(i.start) for i in plan.incisions] + [np.asarray(i.end) for i in plan.incisions]
    pts += [np.asarray(a.skin) for a in plan.access]
    pts += [np.asarray(s.extra["skin_entry"]) for s in plan.screws if s.extra.get("skin_entry")]
    if not pts:
        return None
    pts = np.array(pts, float)
    lo = pts.min(axis=0) - SKIN_PATCH_MARGIN_MM
    hi = pts.max(axis=0) + SKIN_PATCH_MARGIN_MM
    f = max(1, int(round(SKIN_VOXEL_MM / float(np.min(ct.spacing)))))
    if skin_mask is None:
        from spineplan.plan.skin import body_mask

        skin_mask = body_mask(ct)
    m = np.asarray(skin_mask)[::f, ::f, ::f]
    aff = ct.affine.copy()
    aff[:3, :3] *= f
    tris = _mesh(m, aff)
    if tris is None:
        return None
    c = tris.mean(axis=1)
    keep = np.all((c >= lo) & (c <= hi), axis=1)
    # only the posterior-facing part of the skin (normals with +y)
    n = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    keep &= n[:, 1] * np.sign(np.mean(n[keep][:, 1]) if keep.any() else 1.0) > 0
    keep &= c[:, 1] > np.median(pts[:, 1]) - 30.0
    return tris[keep] if keep.any() else None


def spine_3d_picture(ct, spine, plan, *, path: TypePath | None = None, dpi: int = 130,
                     skin_mask=None, levels_margin: int = 1) -> bytes:
    """3D rendering: vertebrae (treated levels highlighted), screws, rods, needles and the
    incisions on a translucent skin patch, from behind-left and from the left side."""
    plt = _mpl()
    from mpl_toolkits.mplot3d.art3d import Line3DCollection, Poly3DCollection

    from spineplan.levels import level_index

    treated = _treated_levels(plan)
    if treated:
        lo_i = min(level_index(x) for x in treated) - levels_margin
        hi_i = max(level_index(x) for x in treated) + levels_margin
        names = [v.name for v in spine.vertebrae if lo_i <= level_index(v.name) <= hi_i]
    else:
        names = list(spine.names)
    f = max(1, int(round(MESH_VOXEL_MM / float(np.min(ct.spacing)))))
    lab, aff = _downsampled(spine.labels, f)
    meshes = []
    for name in names:
        t = _mesh(lab == spine[name].label, aff)
        if t is not None:
            meshes.append((name, t))
    skin = _skin_patch(ct, plan, skin_mask)
    fig = plt.figure(figsize=(10.0, 5.6))
    # matplotlib azimuth: camera direction in the x-y plane from +x; 90 = behind the patient (+y)
    views = (("seen from behind", 12.0, 90.0), ("seen from the patient's left", 5.0, 0.0))
    allpts = np.concatenate([t.reshape(-1, 3) for _, t in meshes]) if meshes else np.zeros((1, 3))
    for k, (title, elev, azim) in enumerate(views):
        ax = fig.add_subplot(1, 2, k + 1, projection="3d")
        for name, t in meshes:
            col = TREATED if name in treated else BONE
            ax.add_collection3d(Poly3DCollection(t, facecolors=_shade(t, col), edgecolors="none", linewidths=0))
        if skin is not None:
            ax.add_collection3d(Poly3DCollection(skin, facecolors=(0.96, 0.80, 0.69, 0.22), edgecolors="none"))
        segs, cols, widths = [], [], []
        for s in plan.screws:
            segs.append([s.entry, s.tip])
            cols.append(LEFT if s.side == "left" else RIGHT)
            widths.append(3.2)
            # the polyaxial head (neck and tulip, as drawn in the DRRs), in which the rod sits
            head_top = np.asarray(s.entry, float) - TULIP_TOP_MM * np.asarray(s.direction(), float)
            segs.append([s.entry, head_top])
            cols.append("#555555")
            widths.append(5.0)
            if s.extra.get("skin_entry"):
                segs.append([s.extra["skin_entry"], s.entry])
                cols.append("#888888")
                widths.append(0.6)
        for r in plan.rods:
            p = np.asarray(r.points, float)
            for a, b in zip(p[:-1], p[1:]):
                segs.append([a, b])
                cols.append("#555555")
                widths.append(2.6)
        for a in plan.access:
            segs.append([a.skin, a.target])
            cols.append(NEEDLE)
            widths.append(1.8)
        for i in plan.incisions:
            segs.append([i.start, i.end])
            cols.append(INCISION)
            widths.append(3.5)
        if segs:
            ax.add_collection3d(Line3DCollection(segs, colors=cols, linewidths=widths))
        for n_, t in meshes:
            c = t.reshape(-1, 3)
            if azim == 0:  # beside the body's front
                p = np.array([c[:, 0].max() + 5.0, c[:, 1].min() - 10.0, c[:, 2].mean()])
            else:  # beside the vertebra on the viewer's left (the patient's left)
                p = np.array([c[:, 0].max() + 6.0, c[:, 1].max(), c[:, 2].mean()])
            ax.text(*p, n_, fontsize=8, color="#222222", fontweight="bold" if n_ in treated else "normal")
        ext_pts = [allpts]
        if skin is not None:
            ext_pts.append(skin.reshape(-1, 3))
        e = np.concatenate(ext_pts)
        lo, hi = e.min(axis=0), e.max(axis=0)
        ctr, half = 0.5 * (lo + hi), 0.5 * float(np.max(hi - lo))
        ax.set_xlim(ctr[0] - half, ctr[0] + half)
        ax.set_ylim(ctr[1] - half, ctr[1] + half)
        ax.set_zlim(ctr[2] - half, ctr[2] + half)
        ax.set_box_aspect((1, 1, 1), zoom=1.35)
        ax.view_init(elev=elev, azim=azim)
        ax.set_axis_off()
        ax.set_title(title, fontsize=10)
        # which way is which (posterior view: the patient's left on the viewer's left, as when
        # standing behind the patient; left-side view: the back on the right)
        ends = ("patient's left", "patient's right") if azim == 90.0 else ("front", "back")
        ax.text2D(0.03, 0.08, ends[0], transform=ax.transAxes, fontsize=8.5, color="#333333")
        ax.text2D(0.97, 0.08, ends[1], transform=ax.transAxes, fontsize=8.5, color="#333333", ha="right")
        ax.text2D(0.5, 0.96, "head", transform=ax.transAxes, fontsize=8.5, color="#333333", ha="center")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=LEFT, lw=3, label="left screws"), Line2D([], [], color=RIGHT, lw=3, label="right screws"),
               Line2D([], [], color="#555555", lw=3, label="rods"), Line2D([], [], color=INCISION, lw=3, label="incisions")]
    if plan.access:
        handles.append(Line2D([], [], color=NEEDLE, lw=2, label="needles"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8.5, frameon=False,
               bbox_to_anchor=(0.5, 0.04))
    fig.text(0.5, 0.01, NOTE, ha="center", fontsize=7, color="#555555")
    fig.subplots_adjust(left=0.0, right=1.0, top=0.95, bottom=0.06, wspace=0.0)
    return _png(fig, path, dpi)


# --------------------------------------------------------------------------- patient picture
#: Vertical position of each level on the schematic figure (fraction of the figure's height from
#: the top of the head), from average adult proportions (C7 at the base of the neck, L5/S1 at the
#: top of the pelvis).
_FIGURE_Y = {"C7": 0.185, "T12": 0.40, "L5": 0.505, "S1": 0.525}


def _level_y(name: str) -> float:
    from spineplan.levels import level_index

    i = level_index(name)
    c7, t12, l5 = level_index("C7"), level_index("T12"), level_index("L5")
    if i <= c7:
        return _FIGURE_Y["C7"] - 0.02 * (c7 - i)
    if i <= t12:
        return _FIGURE_Y["C7"] + (_FIGURE_Y["T12"] - _FIGURE_Y["C7"]) * (i - c7) / (t12 - c7)
    if i <= l5:
        return _FIGURE_Y["T12"] + (_FIGURE_Y["L5"] - _FIGURE_Y["T12"]) * (i - t12) / (l5 - t12)
    return _FIGURE_Y["S1"]


#: The patient's back picture shows this far (mm) either side of the spine and beyond the treated levels.
BACK_HALF_WIDTH_MM = 120.0
BACK_MARGIN_MM = 70.0


def _coronal_grid(ct, spine, treated, step: float = 2.0):
    lo, hi = ct.bounds()
    names = treated or spine.names
    o = np.array([spine[n].frame.origin for n in names if n in spine])
    if len(o):
        lo = np.maximum(lo, [o[:, 0].mean() - BACK_HALF_WIDTH_MM, lo[1], o[:, 2].min() - BACK_MARGIN_MM])
        hi = np.minimum(hi, [o[:, 0].mean() + BACK_HALF_WIDTH_MM, hi[1], o[:, 2].max() + BACK_MARGIN_MM])
    xs = np.arange(lo[0], hi[0] + 1e-6, step)
    ys = np.arange(lo[1], hi[1] + 1e-6, 2 * step)
    zs = np.arange(lo[2], hi[2] + 1e-6, step)
    return xs, ys, zs


def patient_picture(ct, spine, plan, *, path: TypePath | None = None, dpi: int = 130) -> bytes:
    """Left: a person seen from behind with the operated part of the spine boxed. Right: the
    patient's own back from the CT (seen from behind, so the patient's left is on the left):
    body outline, spine, treated levels in orange, incisions as red marks."""
    plt = _mpl()
    from matplotlib.patches import Circle, FancyBboxPatch, Rectangle

    treated = _treated_levels(plan)
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(8.0, 4.6), gridspec_kw={"width_ratios": [0.8, 1.2]})
    # --- schematic person (from behind); figure height 1, y downwards
    a0.set_xlim(-0.5, 0.5)
    a0.set_ylim(1.0, 0.0)
    skin = "#f1c9a5"
    a0.add_patch(Circle((0, 0.08), 0.065, color=skin))
    a0.add_patch(Rectangle((-0.03, 0.14), 0.06, 0.05, color=skin))
    a0.add_patch(FancyBboxPatch((-0.17, 0.18), 0.34, 0.37, boxstyle="round,pad=0.02", color=skin))
    for sx in (-1, 1):
        a0.add_patch(FancyBboxPatch((sx * 0.215 - 0.035, 0.2), 0.07, 0.33, boxstyle="round,pad=0.015", color=skin))
        a0.add_patch(FancyBboxPatch((sx * 0.08 - 0.065, 0.57), 0.13, 0.40, boxstyle="round,pad=0.015", color=skin))
    a0.plot([0, 0], [_FIGURE_Y["C7"], _FIGURE_Y["S1"]], color="#b08060", lw=2.5)
    if treated:
        y0, y1 = _level_y(treated[0]) - 0.02, _level_y(treated[-1]) + 0.02
        a0.add_patch(Rectangle((-0.1, y0), 0.2, y1 - y0, fill=False, ec=INCISION, lw=2.2))
        a0.annotate("operation here", xy=(0.1, 0.5 * (y0 + y1)), xytext=(0.2, 0.5 * (y0 + y1) - 0.12),
                    fontsize=10, color=INCISION, arrowprops=dict(arrowstyle="->", color=INCISION))
    a0.text(-0.45, 0.98, "Left", fontsize=9)
    a0.text(0.45, 0.98, "Right", fontsize=9, ha="right")
    a0.set_title("You, seen from behind", fontsize=11)
    a0.set_aspect("equal")
    a0.axis("off")
    # --- the patient's back from the CT, seen from behind (patient's left on the viewer's left)
    xs, ys, zs = _coronal_grid(ct, spine, treated)
    X, Y, Z = np.meshgrid(xs, ys, zs, indexing="ij")
    pts = np.stack([X, Y, Z], -1)
    body = (ct.sample(pts, order=1, fill=-1000.0) > -300.0).any(axis=1)  # (x, z)
    lab = spine.labels.sample(pts, order=0, fill=0).astype(int)
    codes = {v.label: v.name for v in spine.vertebrae}
    bone = np.isin(lab, list(codes)).any(axis=1)
    treat = np.isin(lab, [spine[n].label for n in treated if n in spine]).any(axis=1)
    rgb = np.ones(body.shape + (3,))
    rgb[body] = np.array([0.945, 0.79, 0.65])
    rgb[bone] = np.array([0.93, 0.91, 0.86])
    rgb[treat] = np.array([0.96, 0.64, 0.25])
    ext = (xs[-1] + 1, xs[0] - 1, zs[0] - 1, zs[-1] + 1)  # x decreasing to the right: left on the left
    a1.imshow(np.transpose(rgb, (1, 0, 2)), origin="lower", extent=ext, interpolation="bilinear")
    for i in plan.incisions:
        a1.plot([i.start[0], i.end[0]], [i.start[2], i.end[2]], color=INCISION, lw=3.5, solid_capstyle="round")
    for a in plan.access:
        a1.plot([a.skin[0]], [a.skin[2]], marker="o", ms=6, color=INCISION)
    for v in spine.vertebrae:
        if v.name in treated:
            o = v.frame.origin
            a1.text(o[0] - 28.0, o[2], v.name, fontsize=9, color="#7a3b00", va="center", fontweight="bold")
    a1.set_xlim(ext[0], ext[1])
    a1.set_ylim(ext[2], ext[3])
    a1.text(0.02, 0.02, "Left", transform=a1.transAxes, fontsize=9)
    a1.text(0.98, 0.02, "Right", transform=a1.transAxes, fontsize=9, ha="right")
    a1.plot([xs[-1] - 10, xs[-1] - 60], [zs[-1] - 12] * 2, color="k", lw=2)
    a1.text(xs[-1] - 35, zs[-1] - 9, "5 cm", ha="center", fontsize=8)
    a1.set_title("Your back from the scan: spine, treated bones (orange), cuts (red)", fontsize=9.5)
    a1.axis("off")
    fig.text(0.5, 0.01, NOTE, ha="center", fontsize=7, color="#555555")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return _png(fig, path, dpi)
