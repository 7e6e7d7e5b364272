"""C-arm geometry: detector intrinsics, pose (extrinsics), projection and back-projection.

Frames
------
* **World** = patient LPS millimetres (+x patient left, +y posterior, +z superior), the frame of
  the CT (:class:`spineplan.volume.Volume`).
* **C-arm frame**: the X-ray source (focal spot) is at the origin; the principal ray runs along
  +z towards the detector plane at ``z = sdd_mm``; +x is the image's column direction (u grows
  to the right) and +y its row direction (v grows downwards). A :class:`Pose` maps world points
  into this frame: ``p_carm = R @ p_world + t``.
* **Pixels**: ``(u, v)`` = (column, row); pixel *centres* are at integer coordinates, so the
  image centre (principal point) is at ``((W - 1) / 2, (H - 1) / 2)``. A point at C-arm
  coordinates ``(x, y, z)`` projects to ``u = cu + sdd * x / z / pixel_mm`` and
  ``v = cv + sdd * y / z / pixel_mm`` (ideal pinhole, no distortion).

Display convention (what the surgeon sees)
------------------------------------------
Every image is the **beam's-eye view**: as seen from the X-ray source looking along the beam,
with the patient's head towards the top of the image (row 0). No mirror is ever applied, so the
geometry stays a proper rigid pinhole. With the C-arm angles of :meth:`Pose.from_carm` this gives
the usual radiographic displays:

* **AP** (patient prone, tube under the table as in spine surgery): the beam passes
  **anterior -> posterior**; the patient's **left is on the image's right** (the standard
  radiological display, as if facing the patient).
* **LAT** (``angular_deg = +90``): the image intensifier (detector) is on the patient's
  **left** and the source on the right (a "left lateral" projection, beam right -> left); the
  patient's anterior is then on the image's **right**, the spinous processes on the left.

Radiographer's C-arm angles (:meth:`Pose.from_carm`)
-----------------------------------------------------
Manufacturers name the two C-arm motions differently (which one is "orbital" depends on how
the C-arm stands at the table), so the angles here are defined by what they do to the beam
relative to the patient's anatomy:

* ``angular_deg`` (lateral rotation): rotation of the C about the patient's long
  (cranio-caudal) axis. 0 = AP. Positive = the **detector** (image intensifier, above the prone
  patient's back) swings towards the **patient's left**; +90 = lateral with the detector on
  the left; +45 = ``OBL-L`` (ipsilateral oblique for the left side's posterior elements).
* ``orbital_deg`` (cranio-caudal tilt): applied after the angular rotation, about the image's
  horizontal axis. Positive = the **detector tilts towards the head** (the beam then runs
  from caudal-anterior to cranial-posterior); negative = towards the feet.

For a prone patient the beam direction (source -> detector) in LPS is therefore

    d = (sin(angular) * cos(orbital),  cos(angular) * cos(orbital),  sin(orbital)).

A supine patient (``patient="supine"``, tube under the table = posterior) has the beam
``d = (sin(angular) * cos(orbital), -cos(angular) * cos(orbital), sin(orbital))``.

>>> carm = CArm(Detector(), Pose.from_carm([0.0, 0.0, 0.0], 0.0, 0.0))
>>> [round(float(c), 6) for c in carm.project([0.0, 0.0, 0.0])]     # isocentre -> image centre
[127.5, 127.5]
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from spineplan.errors import InputError

#: Default source-to-detector distance of a mobile C-arm, mm (typical 9-12" image-intensifier
#: C-arms have SID ~ 1000 mm; e.g. Siemens Cios Alpha 1164 mm, GE OEC 9900 980 mm, Ziehm
#: Vision ~ 1000 mm, manufacturers' data sheets).
DEFAULT_SDD_MM = 1000.0
#: Default source-to-isocentre distance, mm (about 60-65 % of the SDD on mobile C-arms;
#: e.g. OEC 9900: 640 mm of 980 mm, data sheet).
DEFAULT_SID_MM = 600.0
#: Default detector: ~30 cm field (12" image intensifier / 30x30 cm flat panel), 256 px.
DEFAULT_DETECTOR_MM = 300.0
DEFAULT_DETECTOR_PX = 256

_PATIENT_POSITIONS = ("prone", "supine")


def _as3(v, what: str) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        raise InputError(f"{what} must be 3 finite numbers (LPS mm); got {v!r}.")
    return a


def _rotvec_to_matrix(rv: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation vector (radians) -> 3x3 matrix."""
    theta = float(np.linalg.norm(rv))
    if theta < 1e-15:
        return np.eye(3)
    k = rv / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * (kx @ kx)


def _matrix_to_rotvec(r: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(r).as_rotvec()


def _axis_rotation(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64)
    return _rotvec_to_matrix(axis / np.linalg.norm(axis) * angle_rad)


@dataclass(frozen=True)
class Detector:
    """Intrinsics of a mobile C-arm: SDD, image size and square pixel pitch (mm at the detector)."""

    sdd_mm: float = DEFAULT_SDD_MM
    width_px: int = DEFAULT_DETECTOR_PX
    height_px: int = DEFAULT_DETECTOR_PX
    pixel_mm: float = DEFAULT_DETECTOR_MM / DEFAULT_DETECTOR_PX

    def __post_init__(self) -> None:
        if not (self.sdd_mm > 0 and self.pixel_mm > 0 and self.width_px >= 1 and self.height_px >= 1):
            raise InputError(
                f"Detector geometry must be positive (got sdd_mm={self.sdd_mm}, pixel_mm={self.pixel_mm}, "
                f"size={self.width_px}x{self.height_px}).")
        object.__setattr__(self, "width_px", int(self.width_px))
        object.__setattr__(self, "height_px", int(self.height_px))

    @classmethod
    def square(cls, size_px: int, *, field_mm: float = DEFAULT_DETECTOR_MM,
               sdd_mm: float = DEFAULT_SDD_MM) -> "Detector":
        """A square detector of ``field_mm`` side sampled with ``size_px`` pixels."""
        return cls(sdd_mm=sdd_mm, width_px=size_px, height_px=size_px, pixel_mm=field_mm / size_px)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the image."""
        return self.height_px, self.width_px

    @property
    def principal_point(self) -> np.ndarray:
        """(u, v) of the principal ray, the image centre (pixel centres at integers)."""
        return np.array([(self.width_px - 1) / 2.0, (self.height_px - 1) / 2.0])

    @property
    def focal_px(self) -> float:
        """SDD in pixels (the pinhole focal length)."""
        return self.sdd_mm / self.pixel_mm

    def intrinsic_matrix(self) -> np.ndarray:
        """3x3 pinhole matrix K: ``[u, v, 1] ~ K @ p_carm``."""
        f = self.focal_px
        cu, cv = self.principal_point
        return np.array([[f, 0, cu], [0, f, cv], [0, 0, 1.0]])

    def downsampled(self, factor: int) -> "Detector":
        """The same detector area read out with ``factor``x larger pixels (binning)."""
        factor = int(factor)
        if factor < 1:
            raise InputError(f"Downsampling factor must be >= 1; got {factor}.")
        return Detector(sdd_mm=self.sdd_mm, width_px=max(1, self.width_px // factor),
                        height_px=max(1, self.height_px // factor), pixel_mm=self.pixel_mm * factor)


@dataclass(frozen=True, eq=False)
class Pose:
    """Rigid transform world (LPS mm) -> C-arm frame: ``p_carm = rotation @ p_world + translation``.

    The source sits at the C-arm origin; the principal ray is +z (see the module docstring).
    """

    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self) -> None:
        r = np.asarray(self.rotation, dtype=np.float64).reshape(3, 3)
        t = np.asarray(self.translation, dtype=np.float64).reshape(3)
        if not np.allclose(r @ r.T, np.eye(3), atol=1e-6) or np.linalg.det(r) < 0:
            raise InputError("Pose.rotation must be a proper rotation matrix (orthonormal, det +1).")
        object.__setattr__(self, "rotation", r)
        object.__setattr__(self, "translation", t)

    # ------------------------------------------------------------ constructors
    @classmethod
    def from_frame(cls, source_lps, x_axis, y_axis, z_axis) -> "Pose":
        """Pose from the source position and the C-arm axes given in LPS (rows of R)."""
        r = np.vstack([np.asarray(a, float) / np.linalg.norm(a) for a in (x_axis, y_axis, z_axis)])
        src = _as3(source_lps, "source position")
        return cls(r, -r @ src)

    @classmethod
    def from_beam(cls, isocentre_lps, beam_dir, up_lps=(0.0, 0.0, 1.0), sid_mm: float = DEFAULT_SID_MM) -> "Pose":
        """Source at ``isocentre - sid * beam_dir``; the image's top points along ``up_lps``
        (projected perpendicular to the beam)."""
        d = _as3(beam_dir, "beam direction")
        d = d / np.linalg.norm(d)
        up = _as3(up_lps, "up vector")
        up = up - d * float(up @ d)
        if np.linalg.norm(up) < 1e-9:
            raise InputError("The image 'up' direction is parallel to the beam; choose another.")
        up /= np.linalg.norm(up)
        y = -up  # rows grow downwards
        x = np.cross(y, d)
        iso = _as3(isocentre_lps, "isocentre")
        return cls.from_frame(iso - sid_mm * d, x, y, d)

    @classmethod
    def from_carm(cls, isocentre_lps, orbital_deg: float = 0.0, angular_deg: float = 0.0,
                  sid_mm: float = DEFAULT_SID_MM, patient: str = "prone") -> "Pose":
        """Pose of a mobile C-arm set to the radiographer's angles (see the module docstring).

        ``isocentre_lps``: the point on the principal ray ``sid_mm`` from the source (the C-arm
        is centred on it). ``orbital_deg``: cranio-caudal tilt, positive = detector towards the
        head. ``angular_deg``: lateral rotation, positive = detector towards the patient's left.
        ``patient``: "prone" (surgery; tube under the table = anterior) or "supine".
        """
        if patient not in _PATIENT_POSITIONS:
            raise InputError(f"patient must be one of {_PATIENT_POSITIONS}; got {patient!r}.")
        iso = _as3(isocentre_lps, "isocentre")
        # AP base frame: beam along +y (prone: anterior->posterior) or -y (supine); head up.
        if patient == "prone":
            x0, y0, z0 = np.array([1.0, 0, 0]), np.array([0, 0, -1.0]), np.array([0, 1.0, 0])
            spin = -1.0
        else:
            x0, y0, z0 = np.array([-1.0, 0, 0]), np.array([0, 0, -1.0]), np.array([0, -1.0, 0])
            spin = 1.0
        a = np.radians(float(angular_deg))
        o = np.radians(float(orbital_deg))
        ra = _axis_rotation(np.array([0, 0, 1.0]), spin * a)  # detector swings towards +x (left)
        x1, y1, z1 = ra @ x0, ra @ y0, ra @ z0
        ro = _axis_rotation(x1, o)  # detector tilts towards +z (head)
        x2, y2, z2 = x1, ro @ y1, ro @ z1
        return cls.from_frame(iso - sid_mm * z2, x2, y2, z2)

    @classmethod
    def from_params(cls, params, centre) -> "Pose":
        """Pose from 6 numbers about ``centre`` (LPS mm).

        ``params = (rx, ry, rz, tx, ty, tz)``: ``(rx, ry, rz)`` is a rotation vector in degrees
        (axis * angle, in C-arm axes) and ``(tx, ty, tz)`` the C-arm-frame position (mm) of
        ``centre``. So ``p_carm = R @ (p - centre) + (tx, ty, tz)``. Smooth everywhere except at
        180 degrees, so it suits optimisers. Inverse: :meth:`params`.
        """
        p = np.asarray(params, dtype=np.float64).reshape(6)
        c = _as3(centre, "centre")
        r = _rotvec_to_matrix(np.radians(p[:3]))
        return cls(r, p[3:] - r @ c)

    def params(self, centre) -> np.ndarray:
        """The 6 numbers of :meth:`from_params` for this pose about ``centre``."""
        c = _as3(centre, "centre")
        rv = np.degrees(_matrix_to_rotvec(self.rotation))
        return np.concatenate([rv, self.rotation @ c + self.translation])

    # ------------------------------------------------------------ algebra
    def apply(self, xyz) -> np.ndarray:
        """World points (..., 3) -> C-arm frame (..., 3)."""
        xyz = np.asarray(xyz, dtype=np.float64)
        return xyz @ self.rotation.T + self.translation

    def compose(self, other: "Pose") -> "Pose":
        """The pose ``p -> self(other(p))``: ``other`` (e.g. a rigid motion of the patient in
        world coordinates, or a correction) is applied **first**, then ``self``."""
        return Pose(self.rotation @ other.rotation, self.rotation @ other.translation + self.translation)

    def inverse(self) -> "Pose":
        """The inverse transform (C-arm frame -> world)."""
        rt = self.rotation.T
        return Pose(rt, -rt @ self.translation)

    def matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix world -> C-arm."""
        m = np.eye(4)
        m[:3, :3] = self.rotation
        m[:3, 3] = self.translation
        return m

    @property
    def source_lps(self) -> np.ndarray:
        return -self.rotation.T @ self.translation

    @property
    def beam_direction(self) -> np.ndarray:
        """Unit principal-ray direction (source -> detector) in LPS."""
        return self.rotation[2].copy()

    def __repr__(self) -> str:
        s = np.round(self.source_lps, 1).tolist()
        d = np.round(self.beam_direction, 3).tolist()
        return f"Pose(source_lps={s}, beam={d})"


@dataclass(frozen=True, eq=False)
class CArm:
    """A detector and a pose: everything needed to project and to cast rays."""

    detector: Detector = field(default_factory=Detector)
    pose: Pose = field(default_factory=Pose)

    def project(self, xyz_lps, return_depth: bool = False):
        """LPS points (..., 3) -> pixel coordinates (..., 2) as (u = column, v = row).

        With ``return_depth`` also returns the distance along the principal ray (mm; points
        behind the source have depth <= 0 and meaningless pixels)."""
        p = self.pose.apply(xyz_lps)
        z = p[..., 2]
        f = self.detector.focal_px
        cu, cv = self.detector.principal_point
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.stack([cu + f * p[..., 0] / z, cv + f * p[..., 1] / z], axis=-1)
        return (uv, z) if return_depth else uv

    def source_lps(self) -> np.ndarray:
        return self.pose.source_lps

    def pixel_directions_carm(self, uv=None) -> np.ndarray:
        """Unit ray directions in the C-arm frame for pixels ``uv`` (..., 2) or all pixels (H, W, 3)."""
        d = self.detector
        if uv is None:
            vv, uu = np.meshgrid(np.arange(d.height_px, dtype=np.float64),
                                 np.arange(d.width_px, dtype=np.float64), indexing="ij")
            uv = np.stack([uu, vv], axis=-1)
        uv = np.asarray(uv, dtype=np.float64)
        cu, cv = d.principal_point
        x = (uv[..., 0] - cu) * d.pixel_mm
        y = (uv[..., 1] - cv) * d.pixel_mm
        dirs = np.stack([x, y, np.full_like(x, d.sdd_mm)], axis=-1)
        return dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)

    def rays(self, uv=None) -> tuple[np.ndarray, np.ndarray]:
        """Back-projection: (origins, unit directions) in LPS for pixels ``uv`` (..., 2), or for
        every pixel as (H, W, 3) arrays when ``uv`` is None. Origins are the source (a
        broadcast, read-only view)."""
        dirs = self.pixel_directions_carm(uv) @ self.pose.rotation  # R^T applied to row vectors
        origins = np.broadcast_to(self.pose.source_lps, dirs.shape)
        return origins, dirs

    def backproject(self, uv, depth_mm) -> np.ndarray:
        """The LPS point on the ray of pixel ``uv`` at distance ``depth_mm`` along the principal
        axis (C-arm z), i.e. the inverse of :meth:`project` with ``return_depth``."""
        d = self.detector
        uv = np.asarray(uv, dtype=np.float64)
        z = np.asarray(depth_mm, dtype=np.float64)
        cu, cv = d.principal_point
        z = z * np.ones_like(uv[..., 0])
        p = np.stack([(uv[..., 0] - cu) * z / d.focal_px, (uv[..., 1] - cv) * z / d.focal_px, z], axis=-1)
        return self.pose.inverse().apply(p)

    def downsampled(self, factor: int) -> "CArm":
        """The same C-arm with a binned detector (for multi-resolution work)."""
        return replace(self, detector=self.detector.downsampled(factor))

    def with_pose(self, pose: Pose) -> "CArm":
        return replace(self, pose=pose)


def carm_angles_of_direction(beam_dir, patient: str = "prone") -> tuple[float, float]:
    """(orbital_deg, angular_deg) of :meth:`Pose.from_carm` giving the beam direction ``beam_dir``
    (source -> detector, LPS). Inverse of the formula in the module docstring."""
    d = _as3(beam_dir, "beam direction")
    d = d / np.linalg.norm(d)
    orbital = np.degrees(np.arcsin(np.clip(d[2], -1.0, 1.0)))
    yy = d[1] if patient == "prone" else -d[1]
    angular = np.degrees(np.arctan2(d[0], yy))
    return float(orbital), float(angular)
