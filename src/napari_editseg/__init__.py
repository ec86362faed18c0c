"""napari-editseg: segment what a sentence names, from one denoiser forward of an image-editing model."""

from .core import DEFAULT_MODEL, PAPER, EditSegmenter, ModelNotAvailableError, Segmentation, SegmentationSettings

__version__ = "0.1.0"

__all__ = ["PAPER", "DEFAULT_MODEL", "EditSegmenter", "ModelNotAvailableError", "Segmentation", "SegmentationSettings"]
