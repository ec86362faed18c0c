"""The method itself: plain torch and numpy, no napari, no Qt."""

from .model import DEFAULT_MODEL, ModelNotAvailableError
from .segmenter import EditSegmenter, Segmentation
from .settings import PAPER, SegmentationSettings

__all__ = ["PAPER", "DEFAULT_MODEL", "EditSegmenter", "ModelNotAvailableError", "Segmentation", "SegmentationSettings"]
