"""Implants drawn into DRRs: screws, rods and needles as capped cylinders at their true size.

Each implant adds ``mu_alloy * chord`` to a pixel's line integral, the chord being the exact
length of the pixel's ray inside the cylinder (:func:`spineplan.fluoro._kernels.cylinders_chord`).
The tissue the metal displaces is *not* subtracted (it is <= 15 % of titanium's attenuation for
cortical bone at 60 keV and less for soft tissue), so metal is very slightly too dark.

Screws are drawn as their threaded shaft (a cylinder of the nominal diameter from ``entry`` to
``tip``) and, by default, their polyaxial head, which the plan file does not hold: a neck from the
entry and a tulip around the rod's seat (:data:`TULIP_BASE_MM` .. :data:`TULIP_TOP_MM` above the
entry along the screw's axis, :data:`TULIP_DIAMETER_MM` wide), so that the rod, planned through the
heads (:data:`spineplan.plan.rods.TULIP_CENTRE_HEIGHT_MM` above the entry), sits in them as under
the C-arm. Rods are polylines of cylinders (joints of a bent rod overlap by less than a radius).

Accepted inputs (:func:`as_metal`): a :class:`Metal`; a ``spineplan.plan.model.Plan``; a plan
dict (plan.json); or a dict/list of plain dicts ``{"entry", "tip", "diameter_mm"}`` (screws,
needles) and ``{"points", "diameter_mm"}`` (rods).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spineplan.errors import InputError

#: Default rod diameter, mm: 5.5 mm is the most common rod of MIS pedicle-screw systems
#: (e.g. Medtronic CD Horizon Sextant / Longitude, DePuy Viper: 5.5 mm rods; product data).
DEFAULT_ROD_DIAMETER_MM = 5.5
#: Outer diameters (mm) of needle gauges, ISO 9626:2016 Table 1 (8G 4.19, 10G 3.40, 11G 3.05,
#: 13G 2.41, 15G 1.83 nominal maxima rounded).
NEEDLE_GAUGE_OD_MM = {8: 4.19, 10: 3.40, 11: 3.05, 13: 2.41, 15: 1.83}
#: Screws and rods are Ti-6Al-4V; access needles/trocars stainless steel.
SCREW_MATERIAL = "titanium"
ROD_MATERIAL = "titanium"
NEEDLE_MATERIAL = "steel"
#: Polyaxial tulip of a percutaneous pedicle screw, along the screw's axis above the bony entry:
#: the tulip is ~13-16 mm tall and ~10-13 mm wide, the rod's axis sits ~10-14 mm above the bone
#: (manufacturers' technique guides; the rod planner takes 12 mm,
#: :data:`spineplan.plan.rods.TULIP_CENTRE_HEIGHT_MM`). Engineering values: the screw's spherical
#: head and neck fill the first TULIP_BASE_MM (drawn at the shaft's diameter), the tulip runs from
#: there to TULIP_TOP_MM (15 mm tall, the rod's axis 7 mm below its top: 2.75 mm rod radius plus a
#: ~4 mm set screw), TULIP_DIAMETER_MM wide.
TULIP_BASE_MM = 5.0
TULIP_TOP_MM = 20.0
TULIP_DIAMETER_MM = 12.0
#: A tulip is a U-shaped cup around the rod and set screw, not solid metal: it is drawn as a solid
#: cylinder with this fraction of titanium's attenuation (its wall, ~1.5 mm thick around a ~9 mm
#: bore, is 1 - (9/12)^2 = 44 % of the cross-section; the rod and set screw inside add to it).
#: Engineering value; it sets how dark the heads look, not where they are.
TULIP_FILL = 0.6


@dataclass
class Cylinder:
    p0: np.ndarray
    p1: np.ndarray
    diameter_mm: float
    material: str = "titanium"
    kind: str = "screw"  # screw | rod | needle | head (a screw's neck or tulip)
    label: str = ""
    fill: float = 1.0  # fraction of the material's attenuation (a hollow part, see TULIP_FILL)


@dataclass
class Metal:
    """A list of cylinders to draw."""

    cylinders: list[Cylinder] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.cylinders)

    def add(self, p0, p1, diameter_mm: float, material: str, kind: str, label: str = "", fill: float = 1.0) -> None:
        p0 = np.asarray(p0, dtype=np.float64).reshape(3)
        p1 = np.asarray(p1, dtype=np.float64).reshape(3)
        d = float(diameter_mm)
        if not (np.all(np.isfinite(p0)) and np.all(np.isfinite(p1)) and np.isfinite(d) and d > 0):
            raise InputError(f"Implant {label or kind}: points must be finite and the diameter positive "
                             f"(got {p0.tolist()}, {p1.tolist()}, {diameter_mm}).")
        self.cylinders.append(Cylinder(p0, p1, d, material, kind, label, float(fill)))

    def arrays(self, energy_kev: float):
        """(p0 (N,3), p1 (N,3), radius (N,), mu (N,) 1/mm) for the renderer."""
        from spineplan.fluoro.drr import linear_attenuation

        p0 = np.array([c.p0 for c in self.cylinders], dtype=np.float64).reshape(-1, 3)
        p1 = np.array([c.p1 for c in self.cylinders], dtype=np.float64).reshape(-1, 3)
        r = np.array([c.diameter_mm / 2.0 for c in self.cylinders], dtype=np.float64)
        mu = np.array([c.fill * linear_attenuation(c.material, energy_kev) for c in self.cylinders],
                      dtype=np.float64)
        return p0, p1, r, mu

    def screw_axes(self) -> list[tuple[np.ndarray, np.ndarray, str]]:
        """(entry, tip, label) of every screw and needle (for overlays)."""
        return [(c.p0, c.p1, c.label) for c in self.cylinders if c.kind in ("screw", "needle")]


def _get(obj, key, default=None):
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _screw_like(met: Metal, s, material: str, kind: str, heads: bool = False) -> None:
    entry = _get(s, "entry")
    tip = _get(s, "tip")
    if kind == "needle" and _get(s, "skin") is not None:
        entry = _get(s, "skin")  # the needle runs from the skin
    if tip is None:
        tip = _get(s, "target")
    d = _get(s, "diameter_mm")
    if d is None and _get(s, "gauge") is not None:
        g = int(_get(s, "gauge"))
        if g not in NEEDLE_GAUGE_OD_MM:
            raise InputError(f"Unknown needle gauge {g}; known: {sorted(NEEDLE_GAUGE_OD_MM)}.")
        d = NEEDLE_GAUGE_OD_MM[g]
    if entry is None or tip is None or d is None:
        raise InputError(f"A {kind} needs 'entry', 'tip' and 'diameter_mm' (or 'gauge'); got {s!r}.")
    label = " ".join(str(x) for x in (_get(s, "level"), _get(s, "side")) if x)
    material = _get(s, "material", material) or material
    met.add(entry, tip, d, material, kind, label)
    if heads:
        _head(met, np.asarray(entry, dtype=np.float64), np.asarray(tip, dtype=np.float64), float(d), material, label)


def _head(met: Metal, entry: np.ndarray, tip: np.ndarray, d: float, material: str, label: str) -> None:
    """A screw's neck and tulip (see :data:`TULIP_BASE_MM`), along its axis beyond the entry."""
    out = entry - tip
    n = float(np.linalg.norm(out))
    if not n > 0:
        raise InputError(f"Screw {label}: its entry and tip are the same point ({entry.tolist()}).")
    out /= n
    met.add(entry, entry + TULIP_BASE_MM * out, d, material, "head", label)
    met.add(entry + TULIP_BASE_MM * out, entry + TULIP_TOP_MM * out, TULIP_DIAMETER_MM, material, "head", label,
            fill=TULIP_FILL)


def _rod(met: Metal, r) -> None:
    pts = _get(r, "points")
    if pts is None or len(pts) < 2:
        raise InputError(f"A rod needs at least two 'points'; got {r!r}.")
    d = _get(r, "diameter_mm")
    if d is None:
        d = (_get(r, "extra") or {}).get("diameter_mm", DEFAULT_ROD_DIAMETER_MM)
    pts = np.asarray(pts, dtype=np.float64)
    for a, b in zip(pts[:-1], pts[1:]):
        met.add(a, b, d, ROD_MATERIAL, "rod", str(_get(r, "side") or ""))


def as_metal(obj: Any, *, heads: bool = True) -> Metal:
    """Implants from a :class:`Metal`, a plan (object or dict) or lists of plain dicts; ``heads``:
    draw each screw's polyaxial head (neck and tulip, see :data:`TULIP_BASE_MM`)."""
    if isinstance(obj, Metal):
        return obj
    met = Metal()
    if obj is None:
        return met
    if isinstance(obj, (list, tuple)):
        for item in obj:
            if _get(item, "points") is not None:
                _rod(met, item)
            else:
                _screw_like(met, item, SCREW_MATERIAL, "screw", heads)
        return met
    screws = _get(obj, "screws") or []
    rods = _get(obj, "rods") or []
    needles = list(_get(obj, "needles") or []) + list(_get(obj, "access") or [])
    if not (screws or rods or needles) and not hasattr(obj, "screws") and not (
            isinstance(obj, dict) and ({"screws", "rods", "needles", "access"} & set(obj))):
        raise InputError("Cannot draw implants from this object: give a plan, or lists of "
                         "{'entry','tip','diameter_mm'} / {'points','diameter_mm'} dicts.")
    for s in screws:
        _screw_like(met, s, SCREW_MATERIAL, "screw", heads)
    for r in rods:
        _rod(met, r)
    for n in needles:
        _screw_like(met, n, NEEDLE_MATERIAL, "needle")
    return met
