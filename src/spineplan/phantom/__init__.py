"""Synthetic spine CTs with exact ground truth (lower thoracic, lumbar spine and sacrum).

Public API::

    ph = make_phantom(levels="T11-S1", spacing=1.0, lordosis_deg=40.0, fracture=("L1", 2, "wedge"))
    ph.ct, ph.labels   # Volume (HU int16, VerSe uint8), same LPS grid
    ph.truth           # dict, see /work/notes/phantom_truth.md ("spineplan.phantom-truth" v1)
    write_phantom(ph, "out/")  # ct.nii.gz, labels.nii.gz, truth.json (atomic)
    load_truth("out/truth.json")

The anatomy is built from implicit shapes whose dimensions come from published morphometry
(:mod:`spineplan.phantom._morphometry`); the truth values are computed from those shapes, not
from the raster, and the tests check that measurements of the raster agree with them (within
max(0.5 mm, 0.6 voxel)).

Conventions (all LPS mm): each vertebra's frame has x to the patient's left, y posterior, z
superior; ``lordosis_deg`` is the L1-S1 Cobb angle; ``scoliosis_deg`` > 0 is a lumbar curve
(end vertebrae T12 and L4) convex to the patient's left; ``rotation_deg`` > 0 turns the apical
body towards the patient's left; the facet joint spaces are 2 mm. The grid is axis-aligned
(index i -> +x, j -> +y, k -> +z). Every run with the same arguments gives identical files.

Synthetic data for research and testing; not a medical device.
"""

from spineplan.phantom._phantom import Phantom, genant_loss_pct, load_truth, make_phantom, write_phantom

__all__ = ["Phantom", "make_phantom", "write_phantom", "load_truth", "genant_loss_pct"]
