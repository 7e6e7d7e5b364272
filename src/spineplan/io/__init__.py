"""Reading and writing images: the only place in spineplan that touches file formats.

Public API (owned by this package; everything downstream uses :class:`spineplan.volume.Volume`):

- :func:`read_ct` - a DICOM series folder, NIfTI, NRRD or MHA file -> checked CT ``Volume`` in LPS.
- :func:`read_labels` - a label map (VerSe, TotalSegmentator ``total`` or a TotalSegmentator
  folder) -> :class:`Labels` (VerSe codes on the CT grid; level name -> mask).
- :func:`labels_from_volume` - the same for a label ``Volume`` already in memory.
- :func:`write_volume` - a ``Volume`` to NIfTI / NRRD / MHA, atomically.
- :func:`write_labels` - a VerSe label volume as uint8, atomically.
- :func:`read_nifti` - a NIfTI file as it is (no CT checks), e.g. for masks.
"""

from spineplan.io._ct import read_ct
from spineplan.io._labels import Labels, labels_from_volume, read_labels, write_labels
from spineplan.io._nifti import read_nifti, write_volume

__all__ = ["read_ct", "read_labels", "labels_from_volume", "Labels", "write_volume", "write_labels", "read_nifti"]
