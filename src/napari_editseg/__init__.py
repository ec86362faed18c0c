"""napari-editseg: segment what a sentence names, from one denoiser forward of an image-editing model."""

__version__ = "0.1.0"

__all__ = ["PAPER", "DEFAULT_MODEL", "EditSegmenter", "ModelNotAvailableError", "Segmentation", "SegmentationSettings"]


def __getattr__(name: str):
    """The public names, imported on first use (``napari-editseg --help`` does not load torch)."""
    if name in __all__:
        from . import core

        return getattr(core, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
