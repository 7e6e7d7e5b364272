"""Session-cached phantoms for any test: ``get_phantom(**kwargs)`` builds once per kwargs.

>>> ph = get_phantom(levels="L3-L4", spacing=2.0, fov="spine")  # doctest: +SKIP
"""

from __future__ import annotations

import json

_CACHE: dict[str, object] = {}


def _key(kwargs: dict) -> str:
    return json.dumps(kwargs, sort_keys=True, default=str)


def get_phantom(**kwargs):
    """A :class:`spineplan.phantom.Phantom` for ``make_phantom(**kwargs)``, memoised per session.

    Treat the result as read-only: it is shared between tests.
    """
    key = _key(kwargs)
    if key not in _CACHE:
        from spineplan.phantom import make_phantom

        _CACHE[key] = make_phantom(**kwargs)
    return _CACHE[key]


def phantom_dir(tmp_root, **kwargs) -> str:
    """Write ``get_phantom(**kwargs)`` once under ``tmp_root`` (e.g. ``tmp_path_factory.getbasetemp()``)
    and return the folder holding ct.nii.gz, labels.nii.gz and truth.json."""
    import hashlib
    from pathlib import Path

    from spineplan.phantom import write_phantom

    out = Path(tmp_root) / ("phantom_" + hashlib.sha1(_key(kwargs).encode()).hexdigest()[:12])
    if not (out / "truth.json").exists():
        write_phantom(get_phantom(**kwargs), out)
    return str(out)


def names_by_majority(ph, seg) -> dict[str, str | None]:
    """For a phantom ``ph`` and a segmentation ``seg`` of its CT: true level name -> the name of
    the segmentation label holding most of that vertebra's true voxels (None: no label on it)."""
    import numpy as np

    from spineplan.levels import level_from_verse

    lab, ref = np.asarray(seg.labels.array), np.asarray(ph.labels.array)
    out = {}
    for code in np.unique(ref[ref > 0]):
        v, c = np.unique(lab[ref == code], return_counts=True)
        c, v = c[v > 0], v[v > 0]
        out[level_from_verse(int(code))] = level_from_verse(int(v[np.argmax(c)])) if len(v) else None
    return out
