"""The method itself: plain torch and numpy, no napari, no Qt."""

from .model import DEFAULT_MODEL, ModelNotAvailableError
from .segmenter import EditSegmenter, Segmentation
from .settings import SegmentationSettings

__all__ = ["DEFAULT_MODEL", "EditSegmenter", "ModelNotAvailableError", "Segmentation", "SegmentationSettings"]
