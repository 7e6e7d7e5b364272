"""Imaging guidance: C-arm geometry, DRRs (virtual fluoroscopy), named views, registration.

Public API (import from the submodules; this namespace stays light so that importing
``spineplan.fluoro`` does not pull numpy/numba in):

- :mod:`spineplan.fluoro.geometry`: :class:`Detector`, :class:`Pose` (``from_carm``,
  ``from_beam``, ``from_params``/``params``, ``compose``, ``inverse``), :class:`CArm`
  (``project``, ``rays``, ``backproject``, ``downsampled``), ``carm_angles_of_direction``.
- :mod:`spineplan.fluoro.drr`: :class:`AttenuationVolume` (``from_ct``), :func:`render`
  (``mode="fast"|"exact"``, ``metal=``, ``noise=``), :func:`to_display`, :func:`hu_to_mu`.
- :mod:`spineplan.fluoro.metal`: :func:`as_metal` (screws, rods, needles from a plan or dicts).
- :mod:`spineplan.fluoro.views`: :func:`named_view`, :func:`carm_angles`.
- :mod:`spineplan.fluoro.overlay`: vertebra names and screw axes drawn on a DRR or X-ray.

Research software, not a certified medical device: every virtual image is a simulation.
"""
