"""One picture per screw: oblique axial and sagittal slices through the screw axis.

Each slice is an oblique reformat of the CT (``Volume.sample``, trilinear) on a plane that
contains the screw axis:

- **axial**: the plane through the axis closest to the vertebra's transverse plane (its normal
  is the vertebra's superior axis made perpendicular to the screw). Shown radiologically: the
  patient's left on the right of the image, anterior at the top.
- **sagittal**: the plane through the axis closest to the vertebra's mid-sagittal plane (normal
  = the patient-left axis made perpendicular to the screw). Anterior on the left, superior up.

The screw is drawn at its true diameter and length (cylinder + tapered tip, as in the STL),
with a 10 mm scale bar, its label, grade, margin and mean HU, and the disclaimer in small print.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spineplan import DISCLAIMER
from spineplan._atomic import atomic_path
from spineplan.export.stl import TIP_CONE_MM
from spineplan.plan.model import Plan, Screw
from spineplan.typing import TypePath

#: Bone window (width 1800 HU, level 400 HU; the usual CT bone window, e.g. Radiopaedia,
#: "Windowing (CT)"): cortex and cancellous bone both visible.
WINDOW_HU = 1800.0
LEVEL_HU = 400.0
#: Field of view of each slice (mm) and its pixel size.
FOV_MM = 90.0
PIXEL_MM = 0.4
SCALE_BAR_MM = 10.0


def _frame_axes(screw: Screw, spine) -> np.ndarray:
    if spine is not None and screw.level in spine:
        return np.asarray(spine[screw.level].frame.axes, float)
    return np.eye(3)


def slice_planes(screw: Screw, spine=None) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{"axial"|"sagittal": (centre, h, v)}: image right = h, image up = v (unit LPS vectors)."""
    d = screw.direction()
    x, y, z = _frame_axes(screw, spine)
    centre = (np.asarray(screw.entry, float) + np.asarray(screw.tip, float)) / 2

    def perp(v, n):
        w = v - (v @ n) * n
        return w / np.linalg.norm(w)

    n_ax = perp(z, d)  # normal of the axial plane
    h_ax = perp(x, n_ax)  # patient left -> image right
    v_ax = np.cross(n_ax, h_ax)
    if v_ax @ (-y) < 0:  # anterior up
        v_ax = -v_ax
    n_sg = perp(x, d)
    h_sg = perp(y, n_sg)  # posterior -> image right (anterior on the left)
    v_sg = np.cross(n_sg, h_sg)
    if v_sg @ z < 0:
        v_sg = -v_sg
    return {"axial": (centre, h_ax, v_ax), "sagittal": (centre, h_sg, v_sg)}


def reformat(ct, centre, h, v, *, fov_mm: float = FOV_MM, pixel_mm: float = PIXEL_MM) -> tuple[np.ndarray, np.ndarray]:
    """Oblique slice: (image[row, col] with row 0 at the top, in-plane mm coordinates of columns)."""
    c = np.arange(-fov_mm / 2, fov_mm / 2 + 1e-9, pixel_mm)
    uu, vv = np.meshgrid(c, c[::-1])
    pts = np.asarray(centre, float) + uu[..., None] * h + vv[..., None] * v
    return ct.sample(pts, order=1, fill=-1024.0), c


def _screw_outline(screw: Screw, centre, h, v) -> np.ndarray:
    """Screw silhouette (cylinder + cone) in in-plane mm, as a closed polygon."""
    e = np.asarray(screw.entry, float) - centre
    t = np.asarray(screw.tip, float) - centre
    e2 = np.array([e @ h, e @ v])
    t2 = np.array([t @ h, t @ v])
    ax = (t2 - e2) / np.linalg.norm(t2 - e2)
    nrm = np.array([-ax[1], ax[0]])
    r = screw.diameter_mm / 2
    cone = min(TIP_CONE_MM, 0.4 * screw.length_mm)
    b = t2 - cone * ax
    return np.array([e2 + r * nrm, b + r * nrm, t2, b - r * nrm, e2 - r * nrm])


def screw_figure(ct, screw: Screw, path: TypePath, *, spine=None, labels=None, dpi: int = 110) -> Path:
    """Write the PNG for one screw (axial + sagittal oblique slices through its axis)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Polygon

    planes = slice_planes(screw, spine)
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.9), dpi=dpi)
    lo, hi = LEVEL_HU - WINDOW_HU / 2, LEVEL_HU + WINDOW_HU / 2
    mask_vol = None
    if labels is not None and spine is not None and screw.level in spine:
        mask_vol = labels.with_array((np.asarray(labels.array) == spine[screw.level].label).astype(np.float32))
    for ax, (name, (centre, h, v)) in zip(axes, planes.items()):
        img, c = reformat(ct, centre, h, v)
        ext = (c[0] - PIXEL_MM / 2, c[-1] + PIXEL_MM / 2, c[0] - PIXEL_MM / 2, c[-1] + PIXEL_MM / 2)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, extent=ext, interpolation="bilinear")
        if mask_vol is not None:
            m, _ = reformat(mask_vol, centre, h, v)
            if m.max() > 0.5:
                ax.contour(c, c[::-1], m, levels=[0.5], colors=["#f2c14e"], linewidths=0.8)
        poly = _screw_outline(screw, centre, h, v)
        ax.add_patch(Polygon(poly, closed=True, facecolor=(0.2, 0.8, 1.0, 0.35), edgecolor="#33ccff", lw=1.2))
        # scale bar, bottom left
        x0, y0 = c[0] + 5, c[0] + 5
        ax.plot([x0, x0 + SCALE_BAR_MM], [y0, y0], color="white", lw=3, solid_capstyle="butt")
        ax.text(x0 + SCALE_BAR_MM / 2, y0 + 2, f"{SCALE_BAR_MM:g} mm", color="white", ha="center", va="bottom",
                fontsize=8)
        if name == "axial":
            ax.set_title("axial (oblique, through the screw axis)", fontsize=9)
            ax.text(c[-1] - 2, c[-1] - 2, "A", color="yellow", ha="right", va="top", fontsize=8)
            ax.text(c[-1] - 2, 0, "patient L", color="yellow", ha="right", va="center", fontsize=7)
            ax.text(c[0] + 2, 0, "R", color="yellow", ha="left", va="center", fontsize=7)
        else:
            ax.set_title("sagittal (oblique, through the screw axis)", fontsize=9)
            ax.text(c[0] + 2, c[-1] - 2, "S", color="yellow", ha="left", va="top", fontsize=8)
            ax.text(c[0] + 2, 0, "A", color="yellow", ha="left", va="center", fontsize=7)
            ax.text(c[-1] - 2, 0, "P", color="yellow", ha="right", va="center", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    grade = screw.grade or "not graded"
    margin = "?" if screw.min_margin_mm is None else f"{screw.min_margin_mm:.1f} mm"
    hu = screw.extra.get("mean_hu")
    hu_s = "" if hu is None else f"   mean bone density {float(hu):.0f} HU"
    fig.suptitle(f"{screw.level} {screw.side}: {screw.diameter_mm:g} x {screw.length_mm:g} mm screw   "
                 f"grade {grade}   minimum margin {margin}{hu_s}", fontsize=10.5, fontweight="bold")
    fig.text(0.5, 0.015, DISCLAIMER, ha="center", va="bottom", fontsize=5.2, wrap=True, color="#444444")
    fig.tight_layout(rect=(0, 0.05, 1, 0.94))
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def screw_figures(ct, plan: Plan, out_dir: TypePath, *, spine=None, labels=None) -> list[Path]:
    """One PNG per screw in ``out_dir`` named ``<level>_<side>.png``."""
    from spineplan._progress import progress

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [screw_figure(ct, s, out / f"{s.level}_{s.side}.png", spine=spine, labels=labels)
            for s in progress(plan.screws, "screw pictures")]
