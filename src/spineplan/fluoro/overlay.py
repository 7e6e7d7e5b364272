"""Annotations drawn on a DRR or a registered X-ray: vertebra names, screw axes, orientation.

Everything is projected with the image's :class:`~spineplan.fluoro.geometry.CArm`, so the
labels land where the anatomy is in that image. Drawing uses Pillow (imported here only).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spineplan.fluoro.geometry import DEFAULT_SID_MM, CArm

#: Colours (RGB): patient-left implants, patient-right implants, names, orientation letters.
LEFT_COLOUR = (255, 140, 0)
RIGHT_COLOUR = (0, 190, 255)
NAME_COLOUR = (255, 255, 0)
MARK_COLOUR = (255, 255, 255)
RESEARCH_NOTE = "Simulated image. Research software, not a medical device."

#: Anatomical directions (LPS) and the letters of their two ends.
_AXES = ((np.array([1.0, 0, 0]), "L", "R"), (np.array([0, -1.0, 0]), "A", "P"), (np.array([0, 0, 1.0]), "H", "F"))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def orientation_letters(carm: CArm, point_lps) -> dict[str, str]:
    """Which patient direction lies at each image edge: {"right": "L", "left": "R", "top": "H", ...}.

    For each image axis the anatomical axis whose projection is most aligned with it is chosen."""
    p0 = np.asarray(point_lps, dtype=np.float64)
    uv0 = carm.project(p0)
    proj = []
    for vec, pos, neg in _AXES:
        d = carm.project(p0 + 10.0 * vec) - uv0
        proj.append((d, pos, neg))
    out = {}
    for axis, (plus, minus) in ((0, ("right", "left")), (1, ("bottom", "top"))):
        d, pos, neg = max(proj, key=lambda t: abs(t[0][axis]))
        if d[axis] > 0:
            out[plus], out[minus] = pos, neg
        else:
            out[plus], out[minus] = neg, pos
    return out


def draw_overlay(image: np.ndarray, carm: CArm, *, spine=None, metal=None, title: str | None = None,
                 names: bool = True, axes: bool = True, orientation: bool = True,
                 note: str | None = RESEARCH_NOTE, centre_lps=None) -> np.ndarray:
    """RGB uint8 copy of ``image`` (grey or RGB, same size as the detector) with vertebra names
    at their projected body centroids, screw/needle axes (entry dot, line to the tip; orange =
    patient's left, blue = right), orientation letters and a title/research note."""
    from PIL import Image, ImageDraw

    from spineplan.fluoro.metal import as_metal

    img = np.asarray(image)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.dtype != np.uint8:
        raise ValueError("draw_overlay expects a uint8 image (see spineplan.fluoro.drr.to_display).")
    h, w = img.shape[:2]
    pil = Image.fromarray(np.ascontiguousarray(img[..., :3]))
    draw = ImageDraw.Draw(pil)
    size = max(10, int(round(min(h, w) / 28)))
    font = _font(size)
    small = _font(max(9, int(size * 0.7)))

    centre = None if centre_lps is None else np.asarray(centre_lps, dtype=np.float64)
    if spine is not None and names:
        for v in spine.vertebrae:
            (u, vv), depth = carm.project(v.frame.origin, return_depth=True)
            if depth <= 0 or not (0 <= u < w and 0 <= vv < h):
                continue
            r = max(2, size // 5)
            draw.ellipse([u - r, vv - r, u + r, vv + r], fill=NAME_COLOUR)
            draw.text((u + 2 * r + 2, vv - size / 2), v.name, fill=NAME_COLOUR, font=font,
                      stroke_width=2, stroke_fill=(0, 0, 0))
        origins = [v.frame.origin for v in spine.vertebrae]
        if origins and centre is None:
            centre = np.mean(origins, axis=0)
    if metal is not None and axes:
        met = as_metal(metal)
        for entry, tip, label in met.screw_axes():
            (ue, ve), de = carm.project(entry, return_depth=True)
            (ut, vt), dt = carm.project(tip, return_depth=True)
            if de <= 0 or dt <= 0:
                continue
            colour = LEFT_COLOUR if "left" in label else RIGHT_COLOUR if "right" in label else NAME_COLOUR
            draw.line([(ue, ve), (ut, vt)], fill=colour, width=max(1, size // 8))
            r = max(2, size // 6)
            draw.ellipse([ue - r, ve - r, ue + r, ve + r], outline=colour, width=max(1, size // 10))
    if orientation:
        if centre is None:
            centre = carm.backproject(carm.detector.principal_point, DEFAULT_SID_MM)
        letters = orientation_letters(carm, centre)
        pad = 4
        draw.text((w - pad - size, h / 2 - size / 2), letters["right"], fill=MARK_COLOUR, font=font,
                  stroke_width=2, stroke_fill=(0, 0, 0))
        draw.text((pad, h / 2 - size / 2), letters["left"], fill=MARK_COLOUR, font=font,
                  stroke_width=2, stroke_fill=(0, 0, 0))
        # the top letter sits in the top-right corner, clear of the names along the spine
        draw.text((w - pad - size, pad), letters["top"], fill=MARK_COLOUR, font=font,
                  stroke_width=2, stroke_fill=(0, 0, 0))
    line = int(size * 0.9)
    if note:
        draw.text((4, h - 4 - line), note, fill=MARK_COLOUR, font=small, stroke_width=2, stroke_fill=(0, 0, 0))
    if title:
        draw.text((4, h - 4 - line * (2 if note else 1)), title, fill=MARK_COLOUR, font=small, stroke_width=2,
                  stroke_fill=(0, 0, 0))
    return np.asarray(pil)


def view_title(info: dict[str, Any]) -> str:
    """Short title line for an image: view name and C-arm angles."""
    return (f"{info.get('view', '')}  orbital {info.get('orbital_deg', 0):+.1f} deg  "
            f"angular {info.get('angular_deg', 0):+.1f} deg")
