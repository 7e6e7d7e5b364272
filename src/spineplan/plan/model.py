"""The plan model and its file format (``plan.json``, format ``spineplan.plan``, version 1).

Other tools read this file, so the fields of DESIGN.md keep their names and meanings. Every
object keeps unknown keys in ``extra`` and writes them back, so a file edited or extended by
another tool round-trips without loss.

Conventions: points are patient LPS millimetres; ``entry`` is where the screw axis enters bone,
``tip`` its distal end; ``length_mm`` is the catalogue length and equals ``|tip - entry|`` within
0.5 mm; ``side`` is the patient's side; ``grade`` is Gertzbein–Robbins A–E (or None if ungraded).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from spineplan import DISCLAIMER, __version__
from spineplan._atomic import write_text
from spineplan._files import read_text
from spineplan.errors import PlanFormatError
from spineplan.levels import LEVELS

FORMAT = "spineplan.plan"
VERSION = 1
SIDES = ("left", "right")
GRADES = ("A", "B", "C", "D", "E")
#: |tip - entry| must equal length_mm within this tolerance (DESIGN.md).
LENGTH_TOLERANCE_MM = 0.5


class _Ctx:
    """Where we are in the file, for error messages."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, what: str) -> PlanFormatError:
        return PlanFormatError(
            f"{self.source}: {where}: {what}. Fix the file (format '{FORMAT}', version {VERSION}) "
            "or re-create it with 'spineplan plan'."
        )


def _point(ctx: _Ctx, where: str, value: Any) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ctx.fail(where, f"expected a point [x, y, z] in mm, got {value!r}")
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ctx.fail(where, f"expected numbers, got {value!r}") from None
    if not all(math.isfinite(v) for v in out):
        raise ctx.fail(where, f"coordinates must be finite, got {value!r}")
    return out


def _number(ctx: _Ctx, where: str, value: Any, *, positive: bool = False, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ctx.fail(where, f"expected a finite number, got {value!r}")
    if positive and value <= 0:
        raise ctx.fail(where, f"must be positive, got {value!r}")
    return float(value)


def _level(ctx: _Ctx, where: str, value: Any) -> str:
    if value not in LEVELS:
        raise ctx.fail(where, f"unknown level {value!r} (use C1..C7, T1..T12, L1..L5, S1, T13, L6)")
    return value


def _side(ctx: _Ctx, where: str, value: Any) -> str:
    if value not in SIDES:
        raise ctx.fail(where, f"side must be 'left' or 'right' (the patient's side), got {value!r}")
    return value


def _split(cls, d: dict) -> tuple[dict, dict]:
    names = {f.name for f in fields(cls)} - {"extra"}
    return {k: v for k, v in d.items() if k in names}, {k: v for k, v in d.items() if k not in names}


def _r(x, nd=3):
    return None if x is None else round(float(x), nd)


def _rp(p) -> list[float]:
    return [round(float(v), 3) for v in p]


@dataclass
class Screw:
    level: str
    side: str
    entry: list[float]
    tip: list[float]
    diameter_mm: float
    length_mm: float
    medial_angle_deg: float | None = None
    cranial_angle_deg: float | None = None
    grade: str | None = None
    min_margin_mm: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Name as shown to surgeons and in Slicer, e.g. ``L4 left 6.5x45``."""
        return f"{self.level} {self.side} {self.diameter_mm:g}x{self.length_mm:g}"

    def direction(self):
        import numpy as np

        d = np.asarray(self.tip, float) - np.asarray(self.entry, float)
        return d / np.linalg.norm(d)

    def to_dict(self) -> dict:
        return {"level": self.level, "side": self.side, "entry": _rp(self.entry), "tip": _rp(self.tip),
                "diameter_mm": _r(self.diameter_mm, 2), "length_mm": _r(self.length_mm, 2),
                "medial_angle_deg": _r(self.medial_angle_deg, 1), "cranial_angle_deg": _r(self.cranial_angle_deg, 1),
                "grade": self.grade, "min_margin_mm": _r(self.min_margin_mm, 2), **self.extra}

    @classmethod
    def from_dict(cls, d: Any, ctx: _Ctx, where: str) -> "Screw":
        if not isinstance(d, dict):
            raise ctx.fail(where, "expected an object")
        known, extra = _split(cls, d)
        for key in ("level", "side", "entry", "tip", "diameter_mm", "length_mm"):
            if key not in known:
                raise ctx.fail(where, f"missing '{key}'")
        s = cls(
            level=_level(ctx, f"{where}.level", known["level"]),
            side=_side(ctx, f"{where}.side", known["side"]),
            entry=_point(ctx, f"{where}.entry", known["entry"]),
            tip=_point(ctx, f"{where}.tip", known["tip"]),
            diameter_mm=_number(ctx, f"{where}.diameter_mm", known["diameter_mm"], positive=True),
            length_mm=_number(ctx, f"{where}.length_mm", known["length_mm"], positive=True),
            medial_angle_deg=_number(ctx, f"{where}.medial_angle_deg", known.get("medial_angle_deg"), optional=True),
            cranial_angle_deg=_number(ctx, f"{where}.cranial_angle_deg", known.get("cranial_angle_deg"), optional=True),
            grade=known.get("grade"),
            min_margin_mm=_number(ctx, f"{where}.min_margin_mm", known.get("min_margin_mm"), optional=True),
            extra=extra,
        )
        if s.grade is not None and s.grade not in GRADES:
            raise ctx.fail(f"{where}.grade", f"Gertzbein-Robbins grade must be one of A-E or null, got {s.grade!r}")
        axis = math.dist(s.entry, s.tip)
        if abs(axis - s.length_mm) > LENGTH_TOLERANCE_MM:
            raise ctx.fail(where, f"|tip - entry| is {axis:.2f} mm but length_mm is {s.length_mm:g} "
                                  f"(they must agree within {LENGTH_TOLERANCE_MM} mm)")
        return s


@dataclass
class Rod:
    side: str
    points: list[list[float]]
    length_mm: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"side": self.side, "points": [_rp(p) for p in self.points], "length_mm": _r(self.length_mm, 1), **self.extra}

    @classmethod
    def from_dict(cls, d: Any, ctx: _Ctx, where: str) -> "Rod":
        if not isinstance(d, dict):
            raise ctx.fail(where, "expected an object")
        known, extra = _split(cls, d)
        pts = known.get("points")
        if not isinstance(pts, list) or len(pts) < 2:
            raise ctx.fail(f"{where}.points", "a rod needs at least two points")
        return cls(side=_side(ctx, f"{where}.side", known.get("side")),
                   points=[_point(ctx, f"{where}.points[{i}]", p) for i, p in enumerate(pts)],
                   length_mm=_number(ctx, f"{where}.length_mm", known.get("length_mm"), positive=True), extra=extra)


@dataclass
class Incision:
    side: str
    start: list[float]
    end: list[float]
    length_mm: float
    screws: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"side": self.side, "start": _rp(self.start), "end": _rp(self.end), "length_mm": _r(self.length_mm, 1),
                "screws": list(self.screws), **self.extra}

    @classmethod
    def from_dict(cls, d: Any, ctx: _Ctx, where: str) -> "Incision":
        if not isinstance(d, dict):
            raise ctx.fail(where, "expected an object")
        known, extra = _split(cls, d)
        screws = known.get("screws", [])
        if not isinstance(screws, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in screws):
            raise ctx.fail(f"{where}.screws", "expected a list of screw indices")
        return cls(side=_side(ctx, f"{where}.side", known.get("side")),
                   start=_point(ctx, f"{where}.start", known.get("start")),
                   end=_point(ctx, f"{where}.end", known.get("end")),
                   length_mm=_number(ctx, f"{where}.length_mm", known.get("length_mm"), positive=True),
                   screws=screws, extra=extra)


@dataclass
class Access:
    level: str
    procedure: str  # "vertebroplasty" | "kyphoplasty"
    side: str  # "left" | "right" (bipedicular access is two entries)
    skin: list[float]
    entry: list[float]
    target: list[float]
    gauge: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"level": self.level, "procedure": self.procedure, "side": self.side, "skin": _rp(self.skin),
                "entry": _rp(self.entry), "target": _rp(self.target), "gauge": self.gauge, **self.extra}

    @classmethod
    def from_dict(cls, d: Any, ctx: _Ctx, where: str) -> "Access":
        if not isinstance(d, dict):
            raise ctx.fail(where, "expected an object")
        known, extra = _split(cls, d)
        if known.get("procedure") not in ("vertebroplasty", "kyphoplasty"):
            raise ctx.fail(f"{where}.procedure", f"expected 'vertebroplasty' or 'kyphoplasty', got {known.get('procedure')!r}")
        gauge = known.get("gauge")
        if not isinstance(gauge, int) or isinstance(gauge, bool) or not 8 <= gauge <= 22:
            raise ctx.fail(f"{where}.gauge", f"expected a needle gauge such as 11 or 13, got {gauge!r}")
        return cls(level=_level(ctx, f"{where}.level", known.get("level")), procedure=known["procedure"],
                   side=_side(ctx, f"{where}.side", known.get("side")),
                   skin=_point(ctx, f"{where}.skin", known.get("skin")),
                   entry=_point(ctx, f"{where}.entry", known.get("entry")),
                   target=_point(ctx, f"{where}.target", known.get("target")), gauge=gauge, extra=extra)


@dataclass
class PlanWarning:
    code: str  # short machine-readable code, e.g. "narrow-pedicle", "no-safe-screw", "incision-long"
    message: str  # what is wrong and what to do, for the surgeon
    level: str | None = None
    severity: str = "warning"  # "info" | "warning" | "danger"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {"level": self.level, "code": self.code, "message": self.message, "severity": self.severity}
        return {**d, **self.extra}

    @classmethod
    def from_dict(cls, d: Any, ctx: _Ctx, where: str) -> "PlanWarning":
        if not isinstance(d, dict) or not isinstance(d.get("code"), str) or not isinstance(d.get("message"), str):
            raise ctx.fail(where, "a warning needs a 'code' and a 'message' (strings)")
        known, extra = _split(cls, d)
        if known.get("level") is not None:
            _level(ctx, f"{where}.level", known["level"])
        return cls(code=known["code"], message=known["message"], level=known.get("level"),
                   severity=known.get("severity", "warning"), extra=extra)


@dataclass
class CTRef:
    path: str
    sha256: str | None = None
    shape: list[int] | None = None
    spacing_mm: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "shape": self.shape,
                "spacing_mm": None if self.spacing_mm is None else [round(float(s), 4) for s in self.spacing_mm],
                **self.extra}

    @classmethod
    def from_dict(cls, d: Any, ctx: _Ctx) -> "CTRef":
        if not isinstance(d, dict) or not isinstance(d.get("path"), str):
            raise ctx.fail("ct", "expected an object with the CT's 'path'")
        known, extra = _split(cls, d)
        return cls(**known, extra=extra)

    @classmethod
    def of(cls, path, volume=None, *, hash_file: bool = True) -> "CTRef":
        """Reference to a CT file or folder (file name only, never patient data)."""
        path = Path(path)
        sha = file_sha256(path) if hash_file and path.is_file() else None
        return cls(path=path.name, sha256=sha,
                   shape=None if volume is None else list(volume.shape),
                   spacing_mm=None if volume is None else [float(s) for s in volume.spacing])


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Plan:
    screws: list[Screw] = field(default_factory=list)
    rods: list[Rod] = field(default_factory=list)
    incisions: list[Incision] = field(default_factory=list)
    access: list[Access] = field(default_factory=list)
    warnings: list[PlanWarning] = field(default_factory=list)
    ct: CTRef | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def screw(self, level: str, side: str) -> Screw | None:
        return next((s for s in self.screws if s.level == level and s.side == side), None)

    def warn(self, code: str, message: str, level: str | None = None, severity: str = "warning", **extra) -> PlanWarning:
        w = PlanWarning(code=code, message=message, level=level, severity=severity, extra=extra)
        self.warnings.append(w)
        return w

    def to_dict(self) -> dict:
        extra = dict(self.extra)
        extra.setdefault("software", f"spineplan {__version__}")
        extra.setdefault("disclaimer", DISCLAIMER)
        return {"format": FORMAT, "version": VERSION, "frame": "LPS", "units": "mm",
                "ct": None if self.ct is None else self.ct.to_dict(),
                "screws": [s.to_dict() for s in self.screws], "rods": [r.to_dict() for r in self.rods],
                "incisions": [i.to_dict() for i in self.incisions], "access": [a.to_dict() for a in self.access],
                "warnings": [w.to_dict() for w in self.warnings], **extra}

    @classmethod
    def from_dict(cls, d: Any, source: str = "plan") -> "Plan":
        ctx = _Ctx(source)
        if not isinstance(d, dict):
            raise ctx.fail("top level", "expected a JSON object")
        if d.get("format") != FORMAT:
            raise ctx.fail("format", f"expected '{FORMAT}', got {d.get('format')!r}; this is not a spineplan plan file")
        version = d.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ctx.fail("version", f"expected an integer, got {version!r}")
        if version > VERSION:
            raise PlanFormatError(f"{source}: plan version {version} is newer than this spineplan reads "
                                  f"(version {VERSION}); upgrade spineplan.")
        if version < 1:
            raise ctx.fail("version", f"unsupported version {version}")
        if d.get("frame", "LPS") != "LPS" or d.get("units", "mm") != "mm":
            raise ctx.fail("frame/units", f"only frame 'LPS' in 'mm' is supported, got {d.get('frame')!r}/{d.get('units')!r}")

        def items(key):
            v = d.get(key, [])
            if not isinstance(v, list):
                raise ctx.fail(key, "expected a list")
            return v

        top = {"format", "version", "frame", "units", "ct", "screws", "rods", "incisions", "access", "warnings"}
        plan = cls(
            screws=[Screw.from_dict(x, ctx, f"screws[{i}]") for i, x in enumerate(items("screws"))],
            rods=[Rod.from_dict(x, ctx, f"rods[{i}]") for i, x in enumerate(items("rods"))],
            incisions=[Incision.from_dict(x, ctx, f"incisions[{i}]") for i, x in enumerate(items("incisions"))],
            access=[Access.from_dict(x, ctx, f"access[{i}]") for i, x in enumerate(items("access"))],
            warnings=[PlanWarning.from_dict(x, ctx, f"warnings[{i}]") for i, x in enumerate(items("warnings"))],
            ct=None if d.get("ct") is None else CTRef.from_dict(d["ct"], ctx),
            extra={k: v for k, v in d.items() if k not in top},
        )
        n = len(plan.screws)
        for i, inc in enumerate(plan.incisions):
            bad = [j for j in inc.screws if not 0 <= j < n]
            if bad:
                raise ctx.fail(f"incisions[{i}].screws", f"screw indices {bad} do not exist (the plan has {n} screws)")
        return plan

    def save(self, path) -> Path:
        """Write ``plan.json`` atomically."""
        return write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path) -> "Plan":
        path = Path(path)
        text = read_text(path, PlanFormatError, "plan file", "Give the plan.json written by 'spineplan plan'.")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanFormatError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}). "
                                  "The file may be truncated; re-create it with 'spineplan plan'.") from None
        return cls.from_dict(data, source=str(path))
