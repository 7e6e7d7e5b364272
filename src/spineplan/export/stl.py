"""Triangle meshes of screws and rods, written as binary STL in patient LPS mm.

3D Slicer reads the coordinate system of an STL from its header: a header containing
``SPACE=LPS`` is loaded as LPS (otherwise Slicer assumes LPS in recent versions, RAS in old
ones), so every file written here says so.

A screw is a closed mesh: a cylinder of the screw's true diameter from the entry (flat cap) to
:data:`TIP_CONE_MM` before the tip, then a cone to the tip, so its length along the axis is
exactly ``length_mm``. Threads are not modelled (the outer diameter is what matters for breach).
"""

from __future__ import annotations

import struct

import numpy as np

from spineplan._atomic import write_bytes
from spineplan.typing import TypePath

#: Length of the tapered tip of a pedicle screw (blunt cone over the last few mm of the thread;
#: ~3-5 mm on common lumbar screws). Capped at 40% of the length for very short screws.
TIP_CONE_MM = 4.0
#: Facets around the circumference.
SEGMENTS = 32


def _basis(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.cross(d, [1.0, 0, 0])
    if np.linalg.norm(a) < 0.1:
        a = np.cross(d, [0, 1.0, 0])
    a /= np.linalg.norm(a)
    return a, np.cross(d, a)


def screw_triangles(entry, tip, diameter_mm: float, *, segments: int = SEGMENTS) -> np.ndarray:
    """(n, 3, 3) outward-facing triangles of a cylinder + cone screw from ``entry`` to ``tip``."""
    e = np.asarray(entry, float)
    t = np.asarray(tip, float)
    L = float(np.linalg.norm(t - e))
    d = (t - e) / L
    a, b = _basis(d)
    r = diameter_mm / 2
    cone = min(TIP_CONE_MM, 0.4 * L)
    th = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    ring = r * (np.cos(th)[:, None] * a + np.sin(th)[:, None] * b)
    r0 = e + ring
    r1 = e + (L - cone) * d + ring
    tris = []
    for k in range(segments):
        k2 = (k + 1) % segments
        tris.append([e, r0[k2], r0[k]])  # cap, normal -d
        tris.append([r0[k], r0[k2], r1[k2]])  # wall
        tris.append([r0[k], r1[k2], r1[k]])
        tris.append([r1[k], r1[k2], t])  # cone
    return np.asarray(tris)


def rod_triangles(points, diameter_mm: float, *, segments: int = 24) -> np.ndarray:
    """(n, 3, 3) triangles of a closed tube of ``diameter_mm`` along a polyline."""
    pts = np.asarray(points, float)
    r = diameter_mm / 2
    tang = np.gradient(pts, axis=0)
    tang /= np.linalg.norm(tang, axis=1, keepdims=True)
    a, _ = _basis(tang[0])
    th = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    rings = []
    for p, tg in zip(pts, tang):
        a = a - (a @ tg) * tg  # parallel transport of the frame
        a /= np.linalg.norm(a)
        b = np.cross(tg, a)
        rings.append(p + r * (np.cos(th)[:, None] * a + np.sin(th)[:, None] * b))
    tris = []
    for i in range(len(pts) - 1):
        for k in range(segments):
            k2 = (k + 1) % segments
            tris.append([rings[i][k], rings[i][k2], rings[i + 1][k2]])
            tris.append([rings[i][k], rings[i + 1][k2], rings[i + 1][k]])
    for k in range(segments):
        k2 = (k + 1) % segments
        tris.append([pts[0], rings[0][k2], rings[0][k]])
        tris.append([pts[-1], rings[-1][k], rings[-1][k2]])
    return np.asarray(tris)


def stl_bytes(triangles, name: str) -> bytes:
    """Binary STL: 80-byte header (``name`` + ``SPACE=LPS``), count, facets with normals."""
    tri = np.asarray(triangles, np.float64)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    nn = np.linalg.norm(n, axis=1, keepdims=True)
    n = np.divide(n, nn, out=np.zeros_like(n), where=nn > 0)
    header = f"{name} SPACE=LPS".encode("ascii", "replace")[:80]
    if b"SPACE=LPS" not in header:
        header = (header[: 80 - 10] + b" SPACE=LPS")
    rec = np.zeros(len(tri), dtype=[("n", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])
    rec["n"] = n
    rec["v"] = tri
    return header.ljust(80, b" ") + struct.pack("<I", len(tri)) + rec.tobytes()


def write_stl(path: TypePath, triangles, name: str):
    """Write a binary STL atomically."""
    return write_bytes(path, stl_bytes(triangles, name))
