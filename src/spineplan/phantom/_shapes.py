"""Implicit shapes: approximate signed distances (mm, negative inside) evaluated with numpy.

Every shape works on broadcastable world-coordinate arrays ``X, Y, Z`` (LPS mm), so the same
code rasterises a sub-grid (``X = xs[:, None, None]`` ...) and evaluates exact points for the
ground truth. The zero level set of each shape is exact; away from it the value is a
first-order distance estimate ``f / |grad f|`` (good within a few mm of the surface, which is
all the cortex and partial-volume model needs).

>>> import numpy as np
>>> t = Tube(np.zeros(3), np.array([0.0, 0, 10]), ref=np.array([1.0, 0, 0]), r_side=2.0, r_up=3.0)
>>> [round(float(v), 3) for v in t.sdf(np.array([3.0, 0, 0, 0]), np.array([0.0, 2, 0, 0]), np.array([5.0, 5, 12, 15]))]
[0.0, 0.0, 0.0, 3.0]
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-9


def ellipse_sd(c1, c2, r1, r2):
    """Approximate signed distance of (c1, c2) to the ellipse with semi-axes r1, r2."""
    q1 = c1 / r1
    q2 = c2 / r2
    rho = np.sqrt(q1 * q1 + q2 * q2)
    g = np.sqrt((q1 / r1) ** 2 + (q2 / r2) ** 2)  # = rho * |grad rho|
    rmax = np.maximum(r1, r2)
    grad = np.maximum(g / np.maximum(rho, _EPS), 1.0 / rmax)
    return (rho - 1.0) / grad


def ellipsoid_sd(c1, c2, c3, r1, r2, r3):
    """Approximate signed distance to the ellipsoid with semi-axes r1, r2, r3."""
    q1, q2, q3 = c1 / r1, c2 / r2, c3 / r3
    rho = np.sqrt(q1 * q1 + q2 * q2 + q3 * q3)
    g = np.sqrt((q1 / r1) ** 2 + (q2 / r2) ** 2 + (q3 / r3) ** 2)
    rmax = np.maximum(np.maximum(r1, r2), r3)
    grad = np.maximum(g / np.maximum(rho, _EPS), 1.0 / rmax)
    return (rho - 1.0) / grad


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


class Shape:
    """Base class: ``sdf(X, Y, Z)`` on broadcastable arrays and a world bounding box."""

    lo: np.ndarray
    hi: np.ndarray

    def sdf(self, X, Y, Z):  # pragma: no cover - interface
        raise NotImplementedError

    def sdf_points(self, pts) -> np.ndarray:
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
        return np.asarray(self.sdf(pts[:, 0], pts[:, 1], pts[:, 2]), dtype=np.float64)


class Tube(Shape):
    """A tube from ``a`` to ``b`` with an elliptic cross-section.

    The cross-section has semi-axis ``r_up`` along ``e_up`` (``ref`` made perpendicular to the
    axis) and ``r_side`` along ``e_side = e_up x axis``.
    Radii may vary quadratically away from ``t_min`` (0..1 along the tube) up to
    ``flare_a`` x (at a) and ``flare_b`` x (at b) (a number, or (side, up) factors): the
    cross-section perpendicular to the axis at
    ``t_min`` is then exactly the ``2 r_side`` x ``2 r_up`` ellipse and every other one is larger.
    Ends are flat (``round_ends=False``) or half-ellipsoids.
    """

    def __init__(self, a, b, ref, r_side, r_up, *, t_min=0.5, flare_a=1.0, flare_b=1.0, round_ends=True):
        self.a = np.asarray(a, dtype=np.float64)
        self.b = np.asarray(b, dtype=np.float64)
        axis = self.b - self.a
        self.length = float(np.linalg.norm(axis))
        self.u = axis / self.length
        ref = np.asarray(ref, dtype=np.float64)
        up = ref - np.dot(ref, self.u) * self.u
        if np.linalg.norm(up) < 1e-6:  # ref parallel to the axis: pick any perpendicular
            up = np.cross(self.u, [1.0, 0, 0]) if abs(self.u[0]) < 0.9 else np.cross(self.u, [0, 1.0, 0])
        self.e_up = _unit(up)
        self.e_side = np.cross(self.e_up, self.u)
        self.r_side, self.r_up = float(r_side), float(r_up)
        self.t_min = float(t_min)
        self.flare_a = tuple(np.broadcast_to(np.asarray(flare_a, float), (2,)).tolist())
        self.flare_b = tuple(np.broadcast_to(np.asarray(flare_b, float), (2,)).tolist())
        self.round_ends = round_ends
        rmax = max(self.r_side, self.r_up) * max(*self.flare_a, *self.flare_b)
        self.lo = np.minimum(self.a, self.b) - rmax
        self.hi = np.maximum(self.a, self.b) + rmax

    def radii(self, t):
        """Semi-axes (side, up) at axial fraction ``t`` (clamped to 0..1)."""
        t = np.clip(t, 0.0, 1.0)
        (fa_s, fa_u), (fb_s, fb_u) = self.flare_a, self.flare_b
        if fa_s == fa_u == fb_s == fb_u == 1.0:
            return self.r_side, self.r_up
        ta = self.t_min if self.t_min > 0 else 1.0
        tb = (1.0 - self.t_min) if self.t_min < 1 else 1.0
        wa = np.where(t < self.t_min, ((self.t_min - t) / ta) ** 2, 0.0)
        wb = np.where(t < self.t_min, 0.0, ((t - self.t_min) / tb) ** 2)
        return (self.r_side * (1.0 + (fa_s - 1.0) * wa + (fb_s - 1.0) * wb),
                self.r_up * (1.0 + (fa_u - 1.0) * wa + (fb_u - 1.0) * wb))

    def sdf(self, X, Y, Z):
        dx, dy, dz = X - self.a[0], Y - self.a[1], Z - self.a[2]
        s = dx * self.u[0] + dy * self.u[1] + dz * self.u[2]
        c1 = dx * self.e_side[0] + dy * self.e_side[1] + dz * self.e_side[2]
        c2 = dx * self.e_up[0] + dy * self.e_up[1] + dz * self.e_up[2]
        t = s / self.length
        r1, r2 = self.radii(t)
        over = np.maximum(-s, s - self.length)
        if self.round_ends:
            o = np.maximum(over, 0.0)
            r3 = np.minimum(r1, r2)
            return ellipsoid_sd(c1, c2, o, r1, r2, r3)
        return np.maximum(ellipse_sd(c1, c2, r1, r2), over)


class Ellipsoid(Shape):
    """An ellipsoid with centre ``c``, orthonormal axes (rows of ``axes``) and semi-axes ``r``."""

    def __init__(self, c, axes, r):
        self.c = np.asarray(c, dtype=np.float64)
        self.axes = np.asarray(axes, dtype=np.float64).reshape(3, 3)
        self.r = np.asarray(r, dtype=np.float64)
        ext = np.abs(self.axes.T) @ self.r
        self.lo, self.hi = self.c - ext, self.c + ext

    def sdf(self, X, Y, Z):
        d = (X - self.c[0], Y - self.c[1], Z - self.c[2])
        c = [d[0] * ax[0] + d[1] * ax[1] + d[2] * ax[2] for ax in self.axes]
        return ellipsoid_sd(c[0], c[1], c[2], *self.r)


class Frame:
    """Rigid frame: origin (LPS) and rotation ``R`` whose columns are the local x, y, z axes."""

    def __init__(self, origin, R):
        self.origin = np.asarray(origin, dtype=np.float64)
        self.R = np.asarray(R, dtype=np.float64)

    def to_world(self, p) -> np.ndarray:
        return np.asarray(p, dtype=np.float64) @ self.R.T + self.origin

    def dir_to_world(self, v) -> np.ndarray:
        return np.asarray(v, dtype=np.float64) @ self.R.T

    def to_local_xyz(self, X, Y, Z):
        """Broadcastable world arrays -> local (x, y, z) arrays."""
        dx, dy, dz = X - self.origin[0], Y - self.origin[1], Z - self.origin[2]
        R = self.R
        return (dx * R[0, 0] + dy * R[1, 0] + dz * R[2, 0],
                dx * R[0, 1] + dy * R[1, 1] + dz * R[2, 1],
                dx * R[0, 2] + dy * R[1, 2] + dz * R[2, 2])


def rot_x(deg: float) -> np.ndarray:
    """Rotation about +x by ``deg`` (positive tilts +z towards -y, i.e. anteriorly in LPS)."""
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rot_y(deg: float) -> np.ndarray:
    """Rotation about +y (positive tilts +z towards +x, i.e. to the patient's left)."""
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rot_z(deg: float) -> np.ndarray:
    """Rotation about +z (positive turns +x towards +y: the anterior body turns to the left)."""
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
