"""``anatomy.png``: a curved mid-sagittal and a curved coronal slice through the spine with every
vertebra coloured and named, fracture grades marked and the research disclaimer. No patient
identifiers are drawn (no file names, dates or DICOM fields)."""

from __future__ import annotations

import textwrap

import numpy as np

from spineplan import DISCLAIMER
from spineplan._atomic import atomic_path
from spineplan.anatomy.fracture import borderline
from spineplan.anatomy.model import Spine
from spineplan.typing import TypePath
from spineplan.volume import Volume

#: CT display window (level, width) in HU: a bone window.
BONE_WINDOW = (400.0, 1800.0)


def _centreline(spine: Spine) -> tuple[np.ndarray, np.ndarray]:
    """Body centroids (LPS) sorted by z, and a function-like table for x(z), y(z)."""
    pts = np.array([v.frame.origin for v in spine.vertebrae], float)
    order = np.argsort(pts[:, 2])
    return pts[order], order


def _interp_line(pts: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x(z), y(z) through the centroids, smoothed (linear, constant beyond the ends)."""
    if len(pts) == 1:
        return np.full_like(z, pts[0, 0]), np.full_like(z, pts[0, 1])
    x = np.interp(z, pts[:, 2], pts[:, 0])
    y = np.interp(z, pts[:, 2], pts[:, 1])
    k = 9
    if len(z) > k:
        ker = np.ones(k) / k
        x = np.convolve(np.pad(x, k // 2, mode="edge"), ker, mode="valid")
        y = np.convolve(np.pad(y, k // 2, mode="edge"), ker, mode="valid")
    return x, y


def render_anatomy(ct: Volume, spine: Spine, path: TypePath, *, dpi: int = 110):
    """Write the anatomy picture (PNG) atomically and return the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib import colormaps

    if not spine.vertebrae:
        raise ValueError("The spine has no vertebrae to draw.")
    pts, _ = _centreline(spine)
    lo, hi = ct.bounds()
    step = float(max(0.5, min(ct.spacing.min(), 1.0)))
    z = np.arange(max(lo[2], pts[:, 2].min() - 45.0), min(hi[2], pts[:, 2].max() + 45.0) + step, step)
    xc, yc = _interp_line(pts, z)
    lab = spine.labels
    # sagittal: columns y (anterior on the left), rows z (superior on top)
    ys = np.arange(-70.0, 90.0 + step, step)
    sag = np.stack([xc[:, None] + 0 * ys[None, :], yc[:, None] + ys[None, :], z[:, None] + 0 * ys[None, :]], -1)
    xs = np.arange(-90.0, 90.0 + step, step)
    cor = np.stack([xc[:, None] + xs[None, :], yc[:, None] + 0 * xs[None, :], z[:, None] + 0 * xs[None, :]], -1)
    images = []
    for grid in (sag, cor):
        hu = ct.sample(grid, order=1, fill=-1024.0)[::-1]
        lv = lab.sample(grid, order=0, fill=0)[::-1].astype(int)
        images.append((hu, lv))

    names = {v.label: v for v in spine.vertebrae}
    cmap = colormaps["tab20"]
    colours = {code: cmap(i % 20) for i, code in enumerate(sorted(names))}
    level, width = BONE_WINDOW
    fig, axs = plt.subplots(1, 2, figsize=(11, 8.2), gridspec_kw={"width_ratios": [len(ys), len(xs)]})
    extents = [(ys[0], ys[-1], z[0], z[-1]), (xs[0], xs[-1], z[0], z[-1])]
    titles = ["Curved mid-sagittal (anterior left)", "Curved coronal through the bodies (patient right on the left)"]
    for ax, (hu, lv), ext, title, kind in zip(axs, images, extents, titles, ("sag", "cor")):
        ax.imshow(hu, cmap="gray", vmin=level - width / 2, vmax=level + width / 2,
                  extent=(ext[0], ext[1], ext[2], ext[3]), aspect="equal", interpolation="bilinear")
        rgba = np.zeros(lv.shape + (4,))
        for code, col in colours.items():
            m = lv == code
            rgba[m] = (*col[:3], 0.38)
        ax.imshow(rgba, extent=(ext[0], ext[1], ext[2], ext[3]), aspect="equal", interpolation="nearest")
        for v in spine.vertebrae:
            zc = v.frame.origin[2]
            if not (z[0] <= zc <= z[-1]):
                continue
            fr = v.fracture or {}
            txt = v.name
            box = colours.get(v.label, (0, 0, 0))[:3]
            if fr.get("grade"):
                box = (0.85, 0.05, 0.05)  # fractures stand out in red
                if kind == "sag":  # (the grade once, where the heights are seen)
                    txt += f"  Genant {fr['grade']} {fr.get('type', '')}" + (" (uncertain)" if fr.get("uncertain") else "")
            elif borderline(fr):
                box = (0.2, 0.2, 0.2)  # a possible grade 1: not a label colour
                if kind == "sag":
                    txt += "  borderline (Genant 0-1)"
            if not v.complete:
                txt += " (partial)"
            i = int(np.argmin(np.abs(z - zc)))
            if kind == "sag":
                xpos = ys[0] + 3.0
            else:
                xpos = v.frame.origin[0] - xc[i] + 40.0
            ax.text(xpos, zc, txt, color="white", fontsize=10, weight="bold", va="center",
                    bbox=dict(facecolor=box, alpha=0.8, pad=1.5, lw=0))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("mm")
        ax.set_ylabel("z (mm, superior up)" if kind == "sag" else "")
    conf = spine.naming_confidence
    fig.suptitle(f"spineplan anatomy: {spine.names[0]}-{spine.names[-1]} "
                 f"({len(spine.vertebrae)} vertebrae), naming confidence {conf:.2f} ({spine.naming_method})",
                 fontsize=11)
    fig.text(0.5, 0.015, "\n".join(textwrap.wrap(DISCLAIMER, 150)), ha="center", va="bottom", fontsize=8,
             color="#333333")
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path
