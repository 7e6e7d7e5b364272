"""Anatomy: bone and vertebra segmentation, level naming, landmarks, measurements and
fracture grading. The data model lives in :mod:`spineplan.anatomy.model`."""
