"""Images in, maps out: array normalisation and resizing (method steps 1 and 7)."""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F


class ImageScalingWarning(UserWarning):
    """An integer image's values do not span its dtype's range, so it was scaled by its data."""


def to_rgb_float(image: np.ndarray, value_range: Optional[tuple[float, float]] = None) -> np.ndarray:
    """H×W, H×W×1, H×W×3 or H×W×4 of any real dtype → float32 H×W×3 in [0, 1].

    Integers are scaled by their data (:func:`integer_scale`), floats inside [0, 1] are kept
    and other floats are scaled by their own min/max; alpha is dropped, grey repeated.
    ``value_range``: the (min, max) of the whole image this array is a tile of, so that every
    tile is scaled as the whole image would be (:func:`data_range` reads it band by band).
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise ValueError(
            f"image of shape {image.shape} is not H×W, H×W×3 or H×W×4; "
            "pick a 2-D slice (and for multichannel data, one channel or three)"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image of shape {image.shape} is empty")
    if image.dtype == bool:
        image = image.astype(np.float32)
    elif np.issubdtype(image.dtype, np.integer):
        image = image[:, :, :3] if image.ndim == 3 else image  # alpha takes no part in the scale
        low, scale = integer_scale(image, value_range)
        scaled = image.astype(np.float32)
        if low:
            scaled -= np.float32(low)
        scaled /= np.float32(scale)
        image = scaled
    elif np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all():
            raise ValueError("image contains NaN or infinite values")
        with np.errstate(over="ignore"):  # float64 beyond float32's range: handled below
            narrow = image.astype(np.float32)
        low, high = (float(narrow.min()), float(narrow.max())) if value_range is None else map(float, value_range)
        if low < 0.0 or high > 1.0:
            if high - low <= float(np.finfo(np.float32).max):
                image = (narrow - low) / (high - low) if high > low else np.zeros_like(narrow)
            else:  # the range overflows float32 (values near its limit): scale in float64
                wide = image.astype(np.float64)
                low, high = (float(wide.min()), float(wide.max())) if value_range is None else map(float, value_range)
                image = ((wide - low) / (high - low)).astype(np.float32) if high > low else np.zeros_like(narrow)
        else:
            image = narrow
    else:
        raise ValueError(f"image dtype {image.dtype} is not supported: use an integer, float or bool array")
    if image.ndim == 2:
        image = image[:, :, None]
    image = image[:, :, :3]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image)


def integer_scale(image: np.ndarray, value_range: Optional[tuple[float, float]] = None) -> tuple[int, int]:
    """(offset, scale) that map an integer image to [0, 1] as ``(x - offset) / scale``.

    The rule (docs/method.md, step 1): non-negative data are read as recorded at the smallest
    bit depth, at least 8, that holds their maximum — uint8 by 255, 12-bit data in uint16 by
    4095, 0–255 values in an int64 array (a Python list) by 255, full-range uint16 by 65535;
    data with negative values are scaled by their own minimum and maximum. An
    :class:`ImageScalingWarning` says so when this differs from the dtype's own range.
    ``value_range``: the whole image's (min, max) when ``image`` is a tile of it.
    """
    low, high = (int(image.min()), int(image.max())) if value_range is None else (int(v) for v in value_range)
    info = np.iinfo(image.dtype)
    if low < 0:
        warnings.warn(
            f"{image.dtype} image holds negative values ({low} to {high}): scaled by its own minimum and maximum",
            ImageScalingWarning, stacklevel=3,
        )
        return low, max(1, high - low)
    bits = max(8, high.bit_length())
    scale = 2**bits - 1
    if scale != info.max:
        warnings.warn(
            f"{image.dtype} image holds values up to {high}: scaled as {bits}-bit data (0 to {scale} becomes "
            f"0 to 1), not by the {image.dtype} range", ImageScalingWarning, stacklevel=3,
        )
    return 0, scale


def model_size(height: int, width: int, resolution: int, multiple: int, keep_aspect: bool) -> tuple[int, int]:
    """Size the model sees: long side ``resolution``, both sides multiples of ``multiple``."""
    def snap(side: float) -> int:
        return max(multiple, int(round(side / multiple)) * multiple)

    if not keep_aspect:
        return snap(resolution), snap(resolution)
    scale = resolution / max(height, width)
    return snap(height * scale), snap(width * scale)


def to_model_input(rgb: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """float H×W×3 in [0, 1] → 1×3×h×w tensor in [-1, 1], resized antialiased."""
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    x = resize(x, size)
    return (x.clamp(0.0, 1.0) * 2.0 - 1.0).contiguous()


def resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of N×C×h×w (or h×w) maps; antialiased when shrinking."""
    squeeze = maps.ndim == 2
    x = maps[None, None] if squeeze else maps
    if tuple(x.shape[-2:]) != tuple(size):
        shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
        x = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=shrinking)
    return x[0, 0] if squeeze else x


def normalise01(x: torch.Tensor) -> torch.Tensor:
    """Min-max scale to [0, 1]; a constant map becomes zeros."""
    low, high = x.min(), x.max()
    return (x - low) / (high - low) if high > low else torch.zeros_like(x)


def data_range(data: Any, band_pixels: int = 2**24) -> tuple[float, float]:
    """(min, max) of an array-like image (numpy, dask, zarr: anything that slices), read in bands of
    rows of about ``band_pixels`` pixels, so a slide is never held whole; alpha is left out."""
    height, width = data.shape[:2]
    rows = max(1, band_pixels // max(1, width))
    low, high = math.inf, -math.inf
    for r in range(0, height, rows):
        band = np.asarray(data[r:r + rows])
        band = band[..., :3] if band.ndim == 3 and band.shape[2] == 4 else band
        low, high = min(low, float(band.min())), max(high, float(band.max()))
    return low, high
