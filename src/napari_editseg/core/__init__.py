"""The method itself: plain torch and numpy, no napari, no Qt.

The names below are imported on first use, so that importing a light module of the package
(the command line's parser, the settings) does not load torch.
"""

from importlib import import_module

_WHERE = {"DEFAULT_MODEL": ".names", "ModelNotAvailableError": ".model", "EditSegmenter": ".segmenter",
          "Segmentation": ".segmenter", "PAPER": ".settings", "SegmentationSettings": ".settings"}
__all__ = ["PAPER", "DEFAULT_MODEL", "EditSegmenter", "ModelNotAvailableError", "Segmentation", "SegmentationSettings"]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
