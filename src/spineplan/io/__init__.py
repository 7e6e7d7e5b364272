"""Reading and writing images: the only place in spineplan that touches file formats.

Public API (owned by this package; everything downstream uses :class:`spineplan.volume.Volume`):

- :func:`read_ct` - a DICOM series folder, NIfTI, NRRD or MHA file -> CT ``Volume`` in LPS.
- :func:`read_labels` - a label map (VerSe, TotalSegmentator ``total`` or a TotalSegmentator
  folder) -> :class:`Labels` (level name -> mask on the CT grid).
- :func:`write_volume` - a ``Volume`` to NIfTI / NRRD / MHA, atomically.
"""

from spineplan.io._nifti import read_nifti, write_volume

__all__ = ["read_nifti", "write_volume"]
