"""A plane of an image layer as the core is given it, its content hash, and the pixels a label may take.

Shared by the widget (which cuts planes out of napari layers and paints labels), records (which
name a plane by its hash) and replay (which cuts the same plane out of the same data again).
"""

from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import numpy as np


def plane_as_seen(data, index: Sequence[int], rgb: bool, contrast_limits: Optional[Sequence[float]]) -> np.ndarray:
    """The 2-D plane (H×W or H×W×3/4) at ``index`` as the user sees it, which is what the core is given.

    RGB planes are passed as they are. Grey planes are scaled by their contrast limits, so a
    12-bit image in a uint16 array is not segmented as if nearly black.
    """
    plane = np.asarray(data[tuple(index)])
    if rgb:
        return plane
    low, high = (float(v) for v in contrast_limits)
    scaled = (plane.astype(np.float32) - low) / (high - low) if high > low else np.zeros(plane.shape, np.float32)
    return np.clip(scaled, 0.0, 1.0)


def plane_signature(plane: np.ndarray) -> str:
    """A content hash of a plane (dtype, shape and bytes): equal planes, equal signatures."""
    plane = np.ascontiguousarray(plane)
    digest = hashlib.sha256(f"{plane.dtype.str}{plane.shape}".encode())
    digest.update(plane.data)
    return digest.hexdigest()


def paintable(current: np.ndarray, mask: np.ndarray, label_id: int, overwrite: bool) -> np.ndarray:
    """The mask pixels a label may take: all of them with ``overwrite``, else those free or already its own."""
    return mask if overwrite else mask & ((current == 0) | (current == label_id))


__all__ = ["paintable", "plane_as_seen", "plane_signature"]
