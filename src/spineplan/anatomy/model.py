"""The spine as the rest of spineplan sees it: named vertebrae with a frame and measurements.

Frames: every vector is in patient LPS mm. A vertebra's own frame has its origin at the body
centroid and three unit axes (rows of ``VertebraFrame.axes``):

- ``x``: towards the patient's left, in the vertebra's transverse plane (normal of its
  mid-sagittal plane);
- ``y``: posterior, perpendicular to x in the endplate plane (body -> spinous process);
- ``z``: superior, the mean endplate normal (right-handed: z = x cross y).

Angles reported to surgeons use this frame: the medial (transverse) angle is measured from the
sagittal (y-z) plane, the cranial angle from the superior endplate (x-y plane).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SIDES = ("left", "right")


def _vec(v) -> np.ndarray:
    return np.asarray(v, dtype=np.float64).reshape(3)


@dataclass
class VertebraFrame:
    """Origin (LPS mm) and the unit axes x (left), y (posterior), z (superior) as rows."""

    origin: np.ndarray
    axes: np.ndarray

    def __post_init__(self) -> None:
        self.origin = _vec(self.origin)
        self.axes = np.asarray(self.axes, dtype=np.float64).reshape(3, 3)

    def to_local(self, xyz) -> np.ndarray:
        """LPS points (..., 3) -> coordinates in this frame (..., 3)."""
        return (np.asarray(xyz, dtype=np.float64) - self.origin) @ self.axes.T

    def to_world(self, local) -> np.ndarray:
        """Frame coordinates (..., 3) -> LPS points (..., 3)."""
        return np.asarray(local, dtype=np.float64) @ self.axes + self.origin

    def direction_to_local(self, d) -> np.ndarray:
        return np.asarray(d, dtype=np.float64) @ self.axes.T

    def angles_of(self, direction, side: str) -> tuple[float, float]:
        """(medial_angle_deg, cranial_angle_deg) of a screw/needle ``direction`` (entry -> tip).

        Medial angle: angle from the sagittal plane, positive when the tip lies nearer the
        midline than the entry (converging screws). Cranial angle: from the endplate plane,
        positive when the tip is superior to the entry.
        """
        medial, cranial = self.angles_of_many(np.asarray(direction, float)[None], side)
        return float(medial[0]), float(cranial[0])

    def angles_of_many(self, directions, side: str) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`angles_of` for many directions (N, 3): arrays of medial and cranial angles (deg)."""
        d = self.direction_to_local(directions)
        d = d / np.linalg.norm(d, axis=-1, keepdims=True)
        toward_mid = -d[..., 0] if side == "left" else d[..., 0]
        medial = np.degrees(np.arctan2(toward_mid, np.hypot(d[..., 1], d[..., 2])))
        cranial = np.degrees(np.arcsin(np.clip(d[..., 2], -1, 1)))
        return medial, cranial


@dataclass
class Pedicle:
    """One pedicle, measured at its isthmus (its narrowest cross-section)."""

    side: str  # patient side: "left" or "right"
    isthmus_center: np.ndarray  # LPS mm
    axis: np.ndarray  # unit vector, posterior -> anterior along the pedicle
    isthmus_width_mm: float  # transverse (medio-lateral) width of the bone at the isthmus
    isthmus_height_mm: float  # cranio-caudal height at the isthmus
    transverse_angle_deg: float = float("nan")  # medial angle of the axis (frame convention)
    sagittal_angle_deg: float = float("nan")  # cranial angle of the axis

    def __post_init__(self) -> None:
        self.isthmus_center = _vec(self.isthmus_center)
        self.axis = _vec(self.axis)


@dataclass
class Vertebra:
    name: str  # "L4"
    label: int  # VerSe code in the label map
    frame: VertebraFrame
    complete: bool = True  # False when the scan cuts the vertebra
    pedicles: dict[str, Pedicle] = field(default_factory=dict)
    #: body_ap_depth_mm, body_width_mm, anterior_height_mm, middle_height_mm,
    #: posterior_height_mm, canal_ap_mm, canal_transverse_mm, cancellous_hu, volume_ml, ...
    measurements: dict[str, float] = field(default_factory=dict)
    #: Endplates as {"superior"|"inferior": {"point": [...], "normal": [...]}} (LPS)
    endplates: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    #: {"grade": 0-3, "type": "none|wedge|biconcave|crush", "height_loss_pct": float, ...}
    fracture: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def conv(o):
            if isinstance(o, np.ndarray):
                return [round(float(x), 4) for x in o.ravel()] if o.ndim == 1 else o.round(6).tolist()
            if isinstance(o, dict):
                return {k: conv(v) for k, v in o.items()}
            if isinstance(o, (list, tuple)):
                return [conv(v) for v in o]
            if isinstance(o, (np.floating, np.integer)):
                return o.item()
            return o

        return conv(asdict(self))


@dataclass
class Spine:
    """Named vertebrae (cranial to caudal) and the VerSe label map they come from."""

    vertebrae: list[Vertebra]
    labels: Any  # spineplan.volume.Volume holding VerSe codes on the CT grid
    naming_confidence: float = 0.0  # 0..1
    naming_method: str = ""
    warnings: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> Vertebra:
        for v in self.vertebrae:
            if v.name == name:
                return v
        raise KeyError(name)

    def __contains__(self, name: str) -> bool:
        return any(v.name == name for v in self.vertebrae)

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.vertebrae]

    def mask(self, name: str) -> np.ndarray:
        """Boolean mask of one vertebra on the CT grid."""
        return np.asarray(self.labels.array) == self[name].label
