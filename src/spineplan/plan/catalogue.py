"""The screw catalogue: which pedicle screw sizes exist for the implant system in use.

The default catalogue covers the usual adult thoracolumbar range: diameters 4.0-7.5 mm in
0.5 mm steps and lengths 25-60 mm in 5 mm steps (issue 4; typical of polyaxial percutaneous
systems). A specific implant system is loaded from a CSV file with the columns
``diameter_mm,length_mm`` (one row per available size; other columns are ignored).

>>> cat = ScrewCatalogue.default()
>>> cat.diameters_mm[:3], cat.lengths_mm[-1]
((4.0, 4.5, 5.0), 60.0)
>>> cat.has(6.5, 45.0), cat.has(6.25, 45.0)
(True, False)
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from spineplan._files import read_text
from spineplan.errors import InputError
from spineplan.typing import TypePath

#: Default diameters (mm): 4.0 to 7.5 in 0.5 mm steps (issue 4).
DEFAULT_DIAMETERS_MM: tuple[float, ...] = tuple(4.0 + 0.5 * i for i in range(8))
#: Default lengths (mm): 25 to 60 in 5 mm steps (issue 4).
DEFAULT_LENGTHS_MM: tuple[float, ...] = tuple(25.0 + 5.0 * i for i in range(8))
#: Plausibility limits for sizes read from a CSV (outside them the file is probably in cm or inches).
_MIN_DIAMETER_MM, _MAX_DIAMETER_MM = 2.0, 12.0
_MIN_LENGTH_MM, _MAX_LENGTH_MM = 10.0, 120.0


@dataclass(frozen=True)
class ScrewCatalogue:
    """Available screw sizes. ``sizes`` lists the (diameter, length) pairs that exist; when it is
    empty every combination of ``diameters_mm`` x ``lengths_mm`` exists."""

    diameters_mm: tuple[float, ...]
    lengths_mm: tuple[float, ...]
    name: str = "default"
    sizes: tuple[tuple[float, float], ...] = field(default=())

    def __post_init__(self) -> None:
        d = tuple(sorted({float(x) for x in self.diameters_mm}))
        l_ = tuple(sorted({float(x) for x in self.lengths_mm}))
        if not d or not l_:
            raise InputError(f"Screw catalogue {self.name!r} is empty: give at least one diameter and one length.")
        for x in d:
            if not (math.isfinite(x) and _MIN_DIAMETER_MM <= x <= _MAX_DIAMETER_MM):
                raise InputError(f"Screw catalogue {self.name!r}: diameter {x} mm is implausible "
                                 f"(expected {_MIN_DIAMETER_MM}-{_MAX_DIAMETER_MM} mm; are the units mm?).")
        for x in l_:
            if not (math.isfinite(x) and _MIN_LENGTH_MM <= x <= _MAX_LENGTH_MM):
                raise InputError(f"Screw catalogue {self.name!r}: length {x} mm is implausible "
                                 f"(expected {_MIN_LENGTH_MM}-{_MAX_LENGTH_MM} mm; are the units mm?).")
        object.__setattr__(self, "diameters_mm", d)
        object.__setattr__(self, "lengths_mm", l_)
        object.__setattr__(self, "sizes", tuple(sorted({(float(a), float(b)) for a, b in self.sizes})))

    @classmethod
    def default(cls) -> "ScrewCatalogue":
        """Diameters 4.0-7.5 mm (0.5 mm steps) x lengths 25-60 mm (5 mm steps)."""
        return cls(DEFAULT_DIAMETERS_MM, DEFAULT_LENGTHS_MM, name="default")

    @classmethod
    def from_csv(cls, path: TypePath, name: str | None = None) -> "ScrewCatalogue":
        """Read an implant system's sizes from a CSV with columns ``diameter_mm,length_mm``."""
        path = Path(path)
        text = read_text(path, InputError, "screw catalogue file", "Give a CSV with columns diameter_mm,length_mm.",
                         encoding="utf-8-sig")
        reader = csv.DictReader(text.splitlines())
        cols = [c.strip() for c in (reader.fieldnames or [])]
        if "diameter_mm" not in cols or "length_mm" not in cols:
            raise InputError(f"Screw catalogue {path}: the header must contain the columns 'diameter_mm' and "
                             f"'length_mm' (found {cols or 'no header'}).")
        pairs = []
        for lineno, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            if not any(row.values()):
                continue
            try:
                dia, length = float(row["diameter_mm"]), float(row["length_mm"])
            except ValueError:
                raise InputError(f"Screw catalogue {path}, line {lineno}: diameter_mm={row['diameter_mm']!r}, "
                                 f"length_mm={row['length_mm']!r} are not numbers in mm.") from None
            pairs.append((dia, length))
        if not pairs:
            raise InputError(f"Screw catalogue {path}: no sizes listed below the header.")
        return cls(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs), name=name or path.stem, sizes=tuple(pairs))

    def has(self, diameter_mm: float, length_mm: float) -> bool:
        """True when this exact size exists (within 0.01 mm)."""
        return any(abs(d - diameter_mm) < 0.01 and abs(l_ - length_mm) < 0.01 for d, l_ in self.all_sizes())

    def all_sizes(self) -> list[tuple[float, float]]:
        """Every available (diameter_mm, length_mm), smallest diameter first."""
        if self.sizes:
            return list(self.sizes)
        return [(d, l_) for d in self.diameters_mm for l_ in self.lengths_mm]

    def lengths_for(self, diameter_mm: float) -> tuple[float, ...]:
        """Lengths available in a given diameter."""
        return tuple(l_ for d, l_ in self.all_sizes() if abs(d - diameter_mm) < 0.01)
