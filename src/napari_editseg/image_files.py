"""Reading pictures from files: which axes are planes, which are colour, and how much may be decoded.

The rule (docs/usage.md, "Which picture of a file is segmented"):

1. **Axes from the file.** TIFF: tifffile's axes of the first series — from ImageJ or OME
   metadata when the file has it (``Z``, ``T``, ``C``, …), else from the TIFF tags (``S``:
   samples of a pixel; ``I``/``Q``: pages). Other formats (PNG, JPEG, GIF, WebP, BMP):
   Pillow's mode gives the colour (L grey, LA grey+alpha, RGB, RGBA, palette → RGB/RGBA), and
   the frames of an animation or a multipage file are planes (``T``).
2. **Colour** is the trailing ``S`` axis (samples stored per pixel) or the ``C`` axis of ImageJ
   and OME files. Samples: 1 grey, 2 grey+alpha (the alpha dropped), 3 RGB, 4 RGBA (the alpha
   dropped). Channels: 1 is grey; several are chosen with ``channels``: one index (grey) or
   three (RGB, in that order).
3. **Every other axis is a plane axis**, including samples stored first (planar): a numpy
   ``(3, H, W)`` stack written by tifffile or scikit-image is three grey planes, as napari
   shows it, not an RGB picture. A file of several planes needs ``plane`` (one index per
   plane axis); a file of one plane needs none.
4. **Limits before decoding.** Only the chosen plane is decoded when the file stores planes
   separately (TIFF pages, animation frames); the pixels that would be decoded (planes ×
   height × width) are counted from the header first and refused above ``max_pixels``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

PathLike = Union[str, "Path"]
MAX_IMAGE_PIXELS = 2**28  # 268 M pixels (16384²) decoded at most: more is refused before decoding
TIFF_SUFFIXES = (".tif", ".tiff")
# Pillow modes: how many colour samples each gives once converted to what numpy reads
_GREY_MODES = ("1", "L", "I", "F", "I;16", "I;16B", "I;16L", "I;16N")
_CONVERT = {"P": None, "PA": "RGBA", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB", "RGBX": "RGB",
            "RGBa": "RGBA", "La": "LA"}


@dataclass(frozen=True)
class Layout:
    """A file's axes (one letter each, tifffile's letters) and sizes, read from its header."""

    axes: str
    shape: tuple[int, ...]
    colour: str = ""  # the colour axis ("S" or "C"), or "" for grey

    @property
    def plane_axes(self) -> list[tuple[str, int]]:
        return [(a, n) for a, n in zip(self.axes, self.shape) if a not in ("Y", "X", self.colour)]

    @property
    def planes(self) -> int:
        return math.prod(n for _, n in self.plane_axes)

    @property
    def plane_pixels(self) -> int:
        return self.size("Y") * self.size("X")

    @property
    def channels(self) -> int:
        return self.size(self.colour) if self.colour else 1

    def size(self, axis: str) -> int:
        return self.shape[self.axes.index(axis)]

    def describe(self) -> str:
        return " ".join(f"{a}={n}" for a, n in zip(self.axes, self.shape))


# -- the header ---------------------------------------------------------------------------
def _tiff_layout(tif) -> Layout:
    series = tif.series[0]
    axes, shape = series.axes, tuple(int(n) for n in series.shape)
    colour = "S" if axes.endswith("S") else ("C" if "C" in axes and (tif.is_imagej or tif.is_ome) else "")
    return Layout(axes, shape, colour)


def _pil_mode(picture) -> tuple[str, int]:
    """(the mode to decode to, colour samples it has)."""
    mode = picture.mode
    if mode in _GREY_MODES:
        return mode, 1
    if mode == "P":
        mode = "RGBA" if "transparency" in picture.info else "RGB"
    mode = _CONVERT.get(mode) or mode
    samples = {"LA": 2, "RGB": 3, "RGBA": 4}.get(mode)
    if samples is None:
        raise ValueError(f"Pillow mode {picture.mode!r} is not read")
    return mode, samples


def _pil_layout(picture) -> Layout:
    _, samples = _pil_mode(picture)
    frames = int(getattr(picture, "n_frames", 1) or 1)
    axes, shape = "YX", (picture.size[1], picture.size[0])
    if frames > 1:
        axes, shape = "T" + axes, (frames,) + shape
    if samples > 1:
        axes, shape = axes + "S", shape + (samples,)
    return Layout(axes, shape, "S" if samples > 1 else "")


def image_layout(path: PathLike) -> Layout:
    """The file's axes and sizes from its header (nothing decoded); ValueError when not understood."""
    path = Path(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                layout = _tiff_layout(tif)
        else:
            from PIL import Image

            with Image.open(path) as picture:
                layout = _pil_layout(picture)
    except ValueError:
        raise
    except Exception as error:  # every reader fails its own way
        raise ValueError(_cannot_read(path, error)) from None
    if "Y" not in layout.axes or "X" not in layout.axes:
        raise ValueError(f"{str(path)!r} has axes {layout.describe()}, no Y and X: not a picture")
    return layout


def _cannot_read(path: Path, error: BaseException) -> str:
    return (f"could not read {str(path)!r} as an image ({type(error).__name__}: "
            f"{' '.join(str(error).split())[:200]})")


# -- choosing a plane and channels --------------------------------------------------------
def plane_index(layout: Layout, plane: Optional[Sequence[int]], path: Path) -> tuple[int, ...]:
    """The plane to read, one index per plane axis; a file of one plane needs none."""
    axes = layout.plane_axes
    if plane is None or (layout.planes == 1 and not any(plane)):
        if layout.planes > 1:
            sizes = ", ".join(f"{a}: {n}" for a, n in axes if n > 1)
            raise ValueError(f"{str(path)!r} holds {layout.planes} planes ({sizes}; axes {layout.axes}): choose one "
                             f"with --plane ({', '.join('0..' + str(n - 1) for _, n in axes)})")
        return (0,) * len(axes)
    plane = tuple(plane)
    if len(plane) != len(axes) or any(not 0 <= i < n for i, (_, n) in zip(plane, axes)):
        sizes = ", ".join(f"{a}: 0..{n - 1}" for a, n in axes) or "none"
        raise ValueError(f"--plane {','.join(map(str, plane))} is not a plane of {str(path)!r} (plane axes {sizes})")
    return plane


def pick_channels(picture: np.ndarray, layout: Layout, channels: Optional[Sequence[int]], path: Path) -> np.ndarray:
    """H×W×channels → H×W (grey) or H×W×3 (RGB) by the rule of the module docstring."""
    count = layout.channels
    if not layout.colour:
        if channels and tuple(channels) != (0,):
            raise ValueError(f"--channels {_listed(channels)}: {str(path)!r} is grey (one channel, 0)")
        return picture
    if channels is None:
        if layout.colour == "S" and count in (1, 2, 3, 4):
            return picture[..., 0] if count < 3 else picture[..., :3]  # alpha dropped
        raise ValueError(f"{str(path)!r} has {count} channels (axes {layout.axes}): choose one (grey) or three "
                         f"(RGB) with --channels, e.g. --channels 0 or --channels 0,1,2")
    channels = tuple(channels)
    if len(channels) not in (1, 3) or any(not 0 <= c < count for c in channels):
        raise ValueError(f"--channels {_listed(channels)}: give one or three of the {count} channels "
                         f"(0..{count - 1}) of {str(path)!r}")
    return picture[..., channels[0]] if len(channels) == 1 else picture[..., list(channels)]


def _listed(values: Sequence[int]) -> str:
    return ",".join(str(v) for v in values)


def _check_budget(path: Path, layout: Layout, decoded_planes: int, max_pixels: int) -> None:
    pixels = decoded_planes * layout.plane_pixels
    if pixels > max_pixels:
        what = f"{decoded_planes} planes of " if decoded_planes > 1 else ""
        raise ValueError(f"{str(path)!r} would decode to {what}{layout.size('Y')}x{layout.size('X')} = "
                         f"{pixels / 1e6:.0f} M pixels, more than the {max_pixels / 1e6:.0f} M this reads: "
                         "crop or downscale it first" + (", or choose a plane with --plane" if decoded_planes > 1
                                                         else ""))


# -- decoding -----------------------------------------------------------------------------
def _tiff_plane(path: Path, layout: Layout, plane: tuple[int, ...], max_pixels: int) -> np.ndarray:
    """The plane (Y, X[, colour]) of a TIFF, decoding only its pages when the file stores planes in pages."""
    import tifffile

    by_axis = dict(zip([a for a, _ in layout.plane_axes], plane))
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        inside = series.keyframe.axes  # the axes of one page; the pages are stacked on the others
        stacked = layout.axes[:len(layout.axes) - len(inside)]
        stacked_shape = layout.shape[:len(stacked)]
        pages = series.pages
        if layout.axes.endswith(inside) and len(pages) == math.prod(stacked_shape) and all(
                p is not None for p in pages):
            _check_budget(path, layout, math.prod(by_axis_sizes(layout, inside)), max_pixels)
            colours = range(layout.channels) if layout.colour and layout.colour in stacked else [None]
            parts = [pages[int(np.ravel_multi_index(tuple(c if a == layout.colour else by_axis[a] for a in stacked),
                                                    stacked_shape)) if stacked else 0].asarray() for c in colours]
            data, axes = (np.stack(parts), layout.colour + inside) if colours[0] is not None else (parts[0], inside)
        else:
            _check_budget(path, layout, layout.planes, max_pixels)
            data, axes = series.asarray(), layout.axes
    for axis in [a for a in axes if a in by_axis]:  # the plane axes left: take the chosen plane
        data = np.take(data, by_axis[axis], axis=axes.index(axis))
        axes = axes.replace(axis, "", 1)
    return np.moveaxis(data, axes.index(layout.colour), -1) if layout.colour else data


def by_axis_sizes(layout: Layout, axes: str) -> list[int]:
    """Sizes of the plane axes among ``axes``."""
    return [n for a, n in layout.plane_axes if a in axes]


def _pil_frame(path: Path, layout: Layout, plane: tuple[int, ...], max_pixels: int) -> np.ndarray:
    from PIL import Image

    _check_budget(path, layout, 1, max_pixels)
    with Image.open(path) as picture:
        if plane:
            picture.seek(plane[0])
        mode, _ = _pil_mode(picture)
        return np.asarray(picture if picture.mode == mode else picture.convert(mode))


def read_image(path: PathLike, plane: Optional[Sequence[int]] = None, channels: Optional[Sequence[int]] = None,
               max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """One picture of a file, H×W (grey) or H×W×3 (RGB), in the file's dtype, by the module's rule.

    ``plane``: one index per plane axis (needed when the file holds several planes);
    ``channels``: one channel index (grey) or three (RGB). One clear ValueError for anything
    else: a missing or unreadable file, a stack without ``plane``, too many pixels.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"image file {str(path)!r} does not exist")
    layout = image_layout(path)
    if channels is not None and not layout.colour and "S" in layout.axes:
        layout = replace(layout, colour="S")  # samples stored first (planar): --channels makes them colour
    index = plane_index(layout, plane, path)
    try:
        read = _tiff_plane if path.suffix.lower() in TIFF_SUFFIXES else _pil_frame
        picture = read(path, layout, index, max_pixels)
    except ValueError:
        raise
    except Exception as error:  # a truncated or corrupt body, a codec that is missing
        raise ValueError(_cannot_read(path, error)) from None
    return pick_channels(picture, layout, channels, path)


def read_array(path: PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """The whole data of a file as napari opens it (every plane; colour samples last), for replay.

    TIFF: the first series as tifffile reads it. Other formats: the frames stacked first,
    palette pictures as RGB(A). The pixels of every plane count against ``max_pixels``.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"image file {str(path)!r} does not exist")
    layout = image_layout(path)
    _check_budget(path, layout, layout.planes, max_pixels)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                return tif.series[0].asarray()
        frames = [_pil_frame(path, layout, (k,) if layout.planes > 1 else (), max_pixels)
                  for k in range(layout.planes)]
        return np.stack(frames) if len(frames) > 1 else frames[0]
    except ValueError:
        raise
    except Exception as error:
        raise ValueError(_cannot_read(path, error)) from None


def parse_indices(text: Optional[str], option: str) -> Optional[tuple[int, ...]]:
    """``"2"`` or ``"0,3"`` (an option's value) as whole numbers; None stays None."""
    if text is None:
        return None
    try:
        values = tuple(int(part) for part in str(text).split(","))
    except ValueError:
        values = ()
    if not values or any(v < 0 for v in values):
        raise ValueError(f"{option} {text!r}: give whole numbers from 0, separated by commas (e.g. {option} 0,2)")
    return values
