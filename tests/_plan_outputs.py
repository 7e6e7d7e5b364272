"""Shared helpers of the plan-outputs tests: a small synthetic torso CT with a known skin.

The torso is an elliptic cylinder (semi-axes :data:`A_MM` left-right, :data:`B_MM`
antero-posterior) along z: air outside (-1000 HU), a subcutaneous fat layer :data:`FAT_MM`
thick (-100 HU), muscle inside (+40 HU) and a bone block (+400 HU) for the vertebrae.
Coordinates: LPS mm, centre of the ellipse at x = y = 0, posterior skin at y = +B_MM.
"""

from __future__ import annotations

import numpy as np

from spineplan.plan.model import Screw
from spineplan.volume import Volume

A_MM, B_MM, FAT_MM = 110.0, 80.0, 15.0
SPACING = 2.0


def torso(shape=(120, 90, 70), spacing=SPACING) -> Volume:
    nx, ny, nz = shape
    aff = np.diag([spacing, spacing, spacing, 1.0])
    aff[:3, 3] = [-(nx - 1) * spacing / 2, -(ny - 1) * spacing / 2, -(nz - 1) * spacing / 2]
    i, j, k = np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij")
    x = aff[0, 0] * i + aff[0, 3]
    y = aff[1, 1] * j + aff[1, 3]
    r = np.sqrt((x / A_MM) ** 2 + (y / B_MM) ** 2)
    r_fat = np.sqrt((x / (A_MM - FAT_MM)) ** 2 + (y / (B_MM - FAT_MM)) ** 2)
    hu = np.full(shape, -1000.0, np.float32)
    hu[r <= 1.0] = -100.0
    hu[r_fat <= 1.0] = 40.0
    hu[(np.abs(x) < 35) & (y > -40) & (y < 35)] = 400.0
    return Volume(hu, aff)


def ellipse_residual(p) -> float:
    """Distance-like residual of a point from the analytic skin ellipse (mm, first order)."""
    x, y = float(p[0]), float(p[1])
    f = (x / A_MM) ** 2 + (y / B_MM) ** 2 - 1.0
    g = np.hypot(2 * x / A_MM ** 2, 2 * y / B_MM ** 2)
    return abs(f) / g


def screw_with_head(head, direction, *, level="L4", side="left", length=45.0, diameter=6.5, height=12.0) -> Screw:
    """A screw whose rod seat (``height`` above the entry along the axis) is at ``head``."""
    d = np.asarray(direction, float)
    d = d / np.linalg.norm(d)
    entry = np.asarray(head, float) + height * d
    tip = entry + length * d
    return Screw(level, side, entry.tolist(), tip.tolist(), diameter, length, grade="A", min_margin_mm=1.5)


def phantom_files(out_dir, levels="L2-L5", spacing=1.5):
    """Write a small phantom (CT, labels, truth.json) and return its paths."""
    from spineplan.phantom import make_phantom, write_phantom

    ph = make_phantom(levels=levels, spacing=spacing)
    return write_phantom(ph, out_dir)


def run_cli(args: list[str]) -> tuple[int, str]:
    """Run ``spineplan ARGS`` in this process; its exit code and what it printed."""
    import contextlib
    import io

    from spineplan.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main([str(a) for a in args])
    return code, buf.getvalue()
