"""Images in, maps out: array normalisation and resizing (method steps 1 and 7)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_rgb_float(image: np.ndarray) -> np.ndarray:
    """H×W, H×W×1, H×W×3 or H×W×4 of any real dtype → float32 H×W×3 in [0, 1].

    Integers are scaled by their dtype's range, floats inside [0, 1] are kept and
    other floats are scaled by their own min/max; alpha is dropped, grey repeated.
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
        info = np.iinfo(image.dtype)
        image = ((image.astype(np.float64) - info.min) / (info.max - info.min)).astype(np.float32)
    elif np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32)
        if not np.isfinite(image).all():
            raise ValueError("image contains NaN or infinite values")
        low, high = float(image.min()), float(image.max())
        if low < 0.0 or high > 1.0:
            image = (image - low) / (high - low) if high > low else np.zeros_like(image)
    else:
        raise ValueError(f"image dtype {image.dtype} is not supported: use an integer, float or bool array")
    if image.ndim == 2:
        image = image[:, :, None]
    image = image[:, :, :3]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image)


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
