"""Large images from files, read region by region: OME-Zarr (and plain zarr) folders and large or
pyramidal TIFFs; masks written to zarr tile by tile.

:func:`open_levels` gives the picture of a file as a list of lazy 2-D views, finest first (one
for a flat file, one per pyramid level for OME-Zarr multiscales and pyramidal TIFFs): each slices
like an H×W or H×W×3 numpy array and reads only the region asked for, which is what
:func:`~napari_editseg.core.tiling.segment_tiled` takes. Needs ``zarr`` (``pip install
napari-editseg[large]``); TIFFs are opened through tifffile's zarr store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

ZARR_SUFFIXES = (".zarr",)


def _zarr():
    try:
        import zarr
    except ImportError:
        raise ValueError("reading a TIFF or zarr image tile by tile, or writing zarr labels, needs the zarr "
                         "package: pip install 'napari-editseg[large]'") from None
    return zarr


class PlaneView:
    """One 2-D picture inside an N-D array, read lazily: ``index`` fixes the leading (plane) axes,
    ``channels`` picks one (grey) or three (RGB) entries of the channel axis ``channel_axis``."""

    def __init__(self, array: Any, axes: str, index: Sequence[int] = (), channels: Optional[Sequence[int]] = None):
        self.array, self.axes = array, axes
        planes = [i for i, a in enumerate(axes) if a not in "yxc"]
        if len(index) != len(planes):
            raise ValueError(f"the image has {len(planes)} plane axes of sizes {[array.shape[i] for i in planes]}: "
                             "give one --plane index for each")
        self.fixed = dict(zip(planes, index))
        has_c = "c" in axes
        count = array.shape[axes.index("c")] if has_c else 1
        self.channels = tuple(channels) if channels else ((0, 1, 2) if count == 3 else (0,)) if has_c else None
        if has_c and (len(self.channels) not in (1, 3) or max(self.channels) >= count):
            raise ValueError(f"the image has {count} channels: choose one (grey) or three (RGB) with --channels")
        height, width = array.shape[axes.index("y")], array.shape[axes.index("x")]
        self.shape = (height, width) if not has_c or len(self.channels) == 1 else (height, width, 3)
        self.dtype = array.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        rows, cols = (key if isinstance(key, tuple) else (key, slice(None)))[:2]
        picked = self.channels if self.channels is None or len(self.channels) > 1 else self.channels[0]
        by_axis = {"y": rows, "x": cols, "c": list(picked) if isinstance(picked, tuple) else picked}
        selection = tuple(self.fixed[i] if i in self.fixed else by_axis[a] for i, a in enumerate(self.axes))
        part = np.asarray(self.array[selection])
        if isinstance(picked, tuple):  # the channel axis last, where images keep it
            kept = [a for i, a in enumerate(self.axes) if i not in self.fixed]
            part = np.moveaxis(part, kept.index("c"), -1)
        return part


def _ome_levels(group: Any) -> Optional[tuple[list, str]]:
    """An OME-Zarr multiscale group's arrays (finest first) and their axes, or None for a plain group."""
    multiscales = group.attrs.get("multiscales") or group.attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        return None
    first = multiscales[0]
    axes = "".join(a["name"][0].lower() if isinstance(a, dict) else str(a)[0].lower() for a in first["axes"])
    return [group[d["path"]] for d in first["datasets"]], axes


def _default_axes(ndim: int, last: int) -> str:
    """Axes of an array without metadata: ...YX, or ...YXC when the last axis holds 3 or 4 samples."""
    if ndim >= 3 and last in (3, 4):
        return "p" * (ndim - 3) + "yxc"
    return "p" * (ndim - 2) + "yx"


def open_levels(path: Path, plane: Optional[Sequence[int]] = None, channels: Optional[Sequence[int]] = None
                ) -> list[PlaneView]:
    """The picture of an OME-Zarr / zarr folder or a TIFF as lazy views, finest level first."""
    zarr = _zarr()
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        store = tifffile.imread(str(path), aszarr=True)
        node = zarr.open(store, mode="r")
    else:
        if not path.is_dir():
            raise ValueError(f"{str(path)!r} is not a zarr folder")
        node = zarr.open(str(path), mode="r")
    if hasattr(node, "shape"):  # one array
        levels, axes = [node], _default_axes(node.ndim, node.shape[-1])
    else:
        found = _ome_levels(node)
        if found is None:  # a group without OME metadata (a pyramidal TIFF's store): its arrays by name
            arrays = [node[k] for k in sorted(node.array_keys(), key=lambda k: (len(k), k))]
            if not arrays:
                raise ValueError(f"{str(path)!r} holds no image array")
            found = arrays, _default_axes(arrays[0].ndim, arrays[0].shape[-1])
        levels, axes = found
    return [PlaneView(level, axes, tuple(plane or ()), channels) for level in levels]


def zarr_mask(path: Path, shape: tuple[int, int], chunk: int = 1024) -> Any:
    """A new uint8 zarr array of ``shape`` on disk, zero, chunked for tile-by-tile writes."""
    zarr = _zarr()
    return zarr.open_array(str(path), mode="w", shape=shape, chunks=(chunk, chunk), dtype="uint8", fill_value=0)
