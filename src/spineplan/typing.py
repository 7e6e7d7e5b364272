"""Named type aliases used across spineplan, so signatures read like the domain."""

from __future__ import annotations

import os
from typing import Union

import numpy as np

TypePath = Union[str, os.PathLike]
#: A point or direction in patient LPS millimetres, shape (3,).
TypePoint = np.ndarray
#: A boolean mask on a volume's grid, shape (I, J, K).
TypeMask = np.ndarray
