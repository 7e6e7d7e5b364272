"""Vertebral level names and the label conventions that encode them.

Names: ``C1..C7``, ``T1..T12``, ``L1..L5``, ``S1``; transitional ``T13`` and ``L6`` are named
as such. Label maps spineplan writes use VerSe codes; TotalSegmentator ``total`` ids are
accepted on input.

>>> verse_code("L4"), level_from_verse(24)
(23, 'L5')
>>> level_range("L3-L5")
['L3', 'L4', 'L5']
"""

from __future__ import annotations

from spineplan.errors import PlanningError

#: Cranio-caudal order, transitional levels in their anatomical place.
LEVELS: tuple[str, ...] = (
    *(f"C{i}" for i in range(1, 8)),
    *(f"T{i}" for i in range(1, 13)),
    "T13",
    *(f"L{i}" for i in range(1, 6)),
    "L6",
    "S1",
)

#: VerSe label codes (Sekuboyina et al., MedIA 2021): 1-7 C1-C7, 8-19 T1-T12, 20-24 L1-L5,
#: 25 L6, 26 sacrum (named S1 here), 28 T13.
VERSE_CODES: dict[str, int] = {
    **{f"C{i}": i for i in range(1, 8)},
    **{f"T{i}": 7 + i for i in range(1, 13)},
    **{f"L{i}": 19 + i for i in range(1, 6)},
    "L6": 25,
    "S1": 26,
    "T13": 28,
}

#: TotalSegmentator v2 ``total`` task ids of the vertebrae (``class_map["total"]``);
#: 25 is the whole sacrum, 26 its first segment S1. Both map to "S1" here.
TS_TOTAL_IDS: dict[int, str] = {
    25: "S1",
    26: "S1",
    27: "L5", 28: "L4", 29: "L3", 30: "L2", 31: "L1",
    **{32 + (12 - t): f"T{t}" for t in range(1, 13)},  # 32 T12 ... 43 T1
    **{44 + (7 - c): f"C{c}" for c in range(1, 8)},  # 44 C7 ... 50 C1
}

#: TotalSegmentator one-file-per-structure names (``vertebrae_L4.nii.gz`` ...).
TS_FILE_NAMES: dict[str, str] = {
    **{f"vertebrae_{name}": name for name in LEVELS if name not in ("T13", "L6", "S1")},
    "vertebrae_S1": "S1",
    "sacrum": "S1",
}

_VERSE_TO_LEVEL = {code: name for name, code in VERSE_CODES.items()}


def verse_code(level: str) -> int:
    """VerSe code of a level name."""
    try:
        return VERSE_CODES[level]
    except KeyError:
        raise PlanningError(f"Unknown vertebral level {level!r}; use names like L4, T12 or S1.") from None


def level_from_verse(code: int) -> str:
    """Level name of a VerSe code."""
    return _VERSE_TO_LEVEL[int(code)]


def level_index(level: str) -> int:
    """Position in cranio-caudal order (larger is more caudal)."""
    try:
        return LEVELS.index(level)
    except ValueError:
        raise PlanningError(f"Unknown vertebral level {level!r}; use names like L4, T12 or S1.") from None


#: Levels only some spines have (a 13th thoracic, a 6th lumbar vertebra).
TRANSITIONAL = ("T13", "L6")


def adjacent(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` are neighbours in a spine that has no level between them: T12 and
    L1 are (T13 is rare), as are L5 and S1; a transitional level present in the spine would be
    listed between them."""
    i, j = sorted((level_index(a), level_index(b)))
    return i != j and all(lv in TRANSITIONAL for lv in LEVELS[i + 1: j])


def level_above(level: str, present) -> str | None:
    """The level just cranial to ``level`` among ``present`` (names), or None when the nearest
    present one is not its neighbour (see :func:`adjacent`): the level whose facet joint a screw
    in ``level`` must spare."""
    i = level_index(level)
    cands = [n for n in present if level_index(n) < i]
    if not cands:
        return None
    n = max(cands, key=level_index)
    return n if adjacent(n, level) else None


def region(level: str) -> str:
    """'cervical', 'thoracic', 'lumbar' or 'sacral'."""
    level_index(level)
    return {"C": "cervical", "T": "thoracic", "L": "lumbar", "S": "sacral"}[level[0]]


def sort_levels(levels) -> list[str]:
    """Sort level names cranial to caudal."""
    return sorted(levels, key=level_index)


def level_range(spec) -> list[str]:
    """Parse ``"L3-L5"``, ``"L4"`` or ``"T12,L1,L2"`` (or a list of such specs, e.g.
    ``["L4", "L5"]``) into level names, cranial to caudal.

    Transitional levels are included only if named explicitly.
    """
    if not isinstance(spec, str):
        spec = ",".join(str(s) for s in spec)
    out: list[str] = []
    for part in str(spec).replace(" ", "").split(","):
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-", 1)
            ia, ib = sorted((level_index(a.upper()), level_index(b.upper())))
            out += [lv for lv in LEVELS[ia : ib + 1] if lv not in ("T13", "L6") or lv in (a.upper(), b.upper())]
        else:
            level_index(part.upper())
            out.append(part.upper())
    if not out:
        raise PlanningError(f"No levels in {spec!r}; give e.g. --levels L3-L5.")
    return sort_levels(dict.fromkeys(out))
