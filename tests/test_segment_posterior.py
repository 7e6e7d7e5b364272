"""The body path (spineplan.anatomy._canal.body_path) through the discs, on a synthetic column.

Where an axial slice holds no body bone (a disc, or an endplate gap at the path's bone
threshold), the path keeps its coarse point: the refinement's argmax of an all-zero score once
took the search window's corner, 8 mm off the column in x and y, and on the example abdomen CT
this turned the curve's frame by up to 30 deg at L4/L5 (the L5 label then took L4's inferior
articular processes; the real-CT check of that is in test_segment.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from spineplan.anatomy import _bone, _canal

#: Column geometry (mm): vertebral bodies 24 mm high with 8 mm discs between them, radius 16 mm
#: (a lumbar body is 30-38 mm deep; Panjabi et al., Spine 1992), 2 mm voxels.
SPACING = (2.0, 2.0, 2.0)
BODY_H_MM, DISC_H_MM, BODY_R_MM = 24.0, 8.0, 16.0
CENTRE_MM = (61.0, 57.0)  # off the grid's centre and off the 3 mm search grid


def _column(spacing=SPACING):
    nx, ny, nz = (int(round(120.0 / spacing[0])), int(round(120.0 / spacing[1])), int(round(128.0 / spacing[2])))
    x = (np.arange(nx) + 0.5) * spacing[0]
    y = (np.arange(ny) + 0.5) * spacing[1]
    z = (np.arange(nz) + 0.5) * spacing[2]
    X, Y = np.meshgrid(x, y, indexing="ij")
    r = np.hypot(X - CENTRE_MM[0], Y - CENTRE_MM[1])
    hu = np.full((nx, ny, nz), -1000.0, np.float32)
    trunk = np.hypot(X - 60.0, Y - 60.0) < 58.0
    period = BODY_H_MM + DISC_H_MM
    in_body = (z % period) < BODY_H_MM
    for k in range(nz):
        sl = np.where(trunk, 40.0, -1000.0)  # soft tissue
        if in_body[k]:
            sl[r < BODY_R_MM] = 700.0  # cortex
            sl[r < BODY_R_MM - 2.0] = 220.0  # cancellous bone
        else:
            sl[r < BODY_R_MM] = 80.0  # disc
        # the canal (dark) and an arch behind it, so the path's score sees a spine
        sl[np.hypot(X - CENTRE_MM[0], Y - (CENTRE_MM[1] + 26.0)) < 7.0] = 10.0
        ring = np.hypot(X - CENTRE_MM[0], Y - (CENTRE_MM[1] + 26.0))
        sl[(ring >= 7.0) & (ring < 11.0) & (Y > CENTRE_MM[1] + 18.0)] = 600.0
        hu[:, :, k] = sl
    return hu, in_body


@pytest.mark.parametrize("spacing", [SPACING, (1.5, 1.5, 1.5)])
def test_body_path_stays_on_the_column_through_the_discs(spacing):
    """At 2 mm and, since an osteoporotic phantom's biconcave bowl at 1.5 mm sent the path 15-20 mm
    behind its body (``_canal.REFINE_MIN_SLICE_MM``), at 1.5 mm slices."""
    hu, in_body = _column(spacing)
    body = _bone.body_mask(hu)
    fb = _bone.filled_bone(hu, np.asarray(spacing), _canal.PATH_BONE_HU)
    path, thick, _ = _canal.body_path(hu, np.asarray(spacing), body, fb)
    centre = (np.asarray(CENTRE_MM) / np.asarray(spacing[:2])) - 0.5  # in voxel indices
    off_mm = np.hypot(*((path - centre) * np.asarray(spacing[:2])).T)
    disc = ~in_body
    assert disc.sum() >= 8 and in_body.sum() >= 40
    # in a body slice the score's top is the body's inscribed centre: within 2 voxels
    assert np.max(off_mm[in_body]) <= 4.0, off_mm[in_body]
    # in a disc slice (no bone) the point stays where the path search put it, on the column: a
    # 3 mm search grid puts it within half a step of the centre in x and y (2.2 mm), plus the
    # smoothness pull of the neighbouring bodies; the window's corner would be >= 8 mm off
    assert np.max(off_mm[disc]) <= 4.5, off_mm[disc]
    # and there is no bone under those points (the test does test a disc slice)
    assert np.all(thick[disc] < 1.0)
