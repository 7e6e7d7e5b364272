"""Shared fixtures of the registration and level-check tests (simulated X-rays of the abdomen CT)."""

from __future__ import annotations

import numpy as np

#: Small detector for the tests: 128 px over 30 cm (the benchmark uses 256 px).
TEST_DETECTOR_PX = 128


def abdomen(data_file):
    from spineplan.fluoro.drr import AttenuationVolume
    from spineplan.fluoro.register import vertebra_masks
    from spineplan.io import read_ct, read_labels

    ct = read_ct(data_file("totalseg_example_abdomen/example_ct.nii.gz"))
    labels = read_labels(data_file("totalseg_example_abdomen/spine_report_totalseg.nii.gz"), ct)
    masks = vertebra_masks(labels, shape=ct.shape)
    return {
        "ct": ct,
        "labels": labels,
        "masks": masks,
        "att": AttenuationVolume.from_ct(ct, energy_kev=60.0),
        # the simulated X-rays use another effective energy than the registration
        "att_sim": AttenuationVolume.from_ct(ct, energy_kev=80.0),
    }


def start_carm(case, px: int = TEST_DETECTOR_PX):
    from spineplan.fluoro.geometry import Detector
    from spineplan.fluoro.views import named_view

    carm, _ = named_view("AP", ct=case["ct"], detector=Detector.square(px))
    return carm


def body_core_pixels(case, carm, rng, per_level: int, min_fraction: float = 0.5, margin_px: int = 2):
    """Pixels sampled inside each in-view vertebra's projected body at ``carm`` (the truth):
    where the ray crosses that body for at least ``min_fraction`` of its longest path and no
    other body lies within ``margin_px``. Returns [(level, (u, v)), ...]."""
    from scipy.ndimage import binary_dilation

    from spineplan.fluoro.levelcheck import MIN_PATH_MM, body_masks, project_vertebrae
    from spineplan.fluoro.register import in_view

    names = in_view(carm, case["masks"], case["ct"].affine)
    sub = {n: case["masks"][n] for n in names}
    bodies = project_vertebrae(carm, body_masks(sub, case["ct"].affine), case["ct"].affine)
    out = []
    for n in names:
        img = bodies[n]
        others = np.zeros(img.shape, bool)
        for m, o in bodies.items():
            if m != n:
                others |= o >= MIN_PATH_MM
        others = binary_dilation(others, iterations=margin_px)
        core = (img >= min_fraction * img.max()) & ~others
        vv, uu = np.nonzero(core)
        if len(vv) == 0:
            continue
        pick = rng.choice(len(vv), size=min(per_level, len(vv)), replace=False)
        out += [(n, (float(uu[i]), float(vv[i]))) for i in pick]
    return out
