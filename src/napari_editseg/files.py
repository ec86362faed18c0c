"""Reading pictures and writing results, shared by the CLI, batch labelling and evaluation.

Every file written for a user goes through :func:`atomic_path`: it is written under a
temporary name in its own folder and then moved over the destination in one step
(``os.replace``), so a kill, Ctrl-C or a full disk leaves either the old file or the new
one, never a truncated one; a symlink at the destination is replaced, not written through.
"""

from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]
MAX_IMAGE_PIXELS = 2**28  # 268 M pixels (16384²): more is refused before it is decoded
PARTIAL = ".partial"  # marks a temporary file of atomic_path; a kill may leave one behind
TIFF_SUFFIXES = (".tif", ".tiff")


# -- reading ------------------------------------------------------------------------------
def image_pixels(path: Path) -> Optional[int]:
    """Pixel count from the file's header, without decoding it; None when the header is not
    understood (the reader then says what is wrong)."""
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape = tif.series[0].shape
            channels = shape[-1] if len(shape) >= 3 and shape[-1] in (3, 4) else 1
            return int(np.prod(shape, dtype=np.int64)) // channels
        from PIL import Image

        with Image.open(path) as picture:
            return picture.size[0] * picture.size[1]
    except Exception:  # not a TIFF / not a picture Pillow knows: leave it to the reader
        return None


def read_image(path: PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """PNG, JPEG, TIFF and what else scikit-image reads; one clear ValueError otherwise.

    Files of more than ``max_pixels`` pixels are refused from their header, before decoding
    (a few MB of compressed TIFF can hold tens of GB of pixels).
    """
    from skimage import io

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"image file {str(path)!r} does not exist")
    pixels = image_pixels(file)
    if pixels is not None and pixels > max_pixels:
        raise ValueError(f"{str(path)!r} holds {pixels / 1e6:.0f} M pixels, more than the {max_pixels / 1e6:.0f} M "
                         "this reads: crop or downscale it first")
    try:
        return np.asarray(io.imread(file))
    except Exception as error:  # every reader fails its own way; the user needs one line
        raise ValueError(f"could not read {str(path)!r} as an image ({type(error).__name__}: "
                         f"{' '.join(str(error).split())[:200]})") from None


# -- writing ------------------------------------------------------------------------------
@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix, so writers pick the same format); when
    the block ends without an exception it replaces ``path`` in one step, otherwise it is
    removed. Folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}{PARTIAL}{path.suffix}")
    try:
        yield temporary
        with open(temporary, "rb+") as handle:  # on disk before the name points at it
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def remove_partials(path: PathLike) -> None:
    """Delete what a killed writer left of ``path``'s temporary files (never ``path`` itself)."""
    path = Path(path)
    for leftover in path.parent.glob(f".{path.name}.*{PARTIAL}{path.suffix}"):
        leftover.unlink(missing_ok=True)


def write_json(path: PathLike, data: Any) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=1))


def write_npy(path: PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as temporary:
        np.save(temporary, array)


def write_labels(path: PathLike, labels: np.ndarray, description: Optional[dict] = None) -> None:
    """A label image as it is (TIFF via tifffile, PNG via Pillow, else scikit-image).

    ``description`` (a dict) is stored inside the file — the TIFF's ImageDescription, a PNG
    text chunk — so the label image says what made it (:func:`read_description`).
    """
    path = Path(path)
    text = None if description is None else json.dumps(description)
    with atomic_path(path) as temporary:
        suffix = path.suffix.lower()
        if suffix in TIFF_SUFFIXES:
            import tifffile

            tifffile.imwrite(temporary, labels, description=text, metadata=None)
        elif suffix == ".png":
            from PIL import Image, PngImagePlugin

            info = PngImagePlugin.PngInfo()
            if text is not None:
                info.add_text("napari-editseg", text)
            Image.fromarray(labels).save(temporary, pnginfo=info)
        else:
            from skimage import io

            io.imsave(temporary, labels, check_contrast=False)


def read_description(path: PathLike) -> Optional[dict]:
    """What :func:`write_labels` stored in a label image; None when it holds nothing of ours."""
    path = Path(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                text = tif.pages[0].description
        else:
            from PIL import Image

            with Image.open(path) as picture:
                text = picture.text.get("napari-editseg")
        data = json.loads(text) if text else None
    except Exception:  # unreadable, truncated or foreign: not ours
        return None
    return data if isinstance(data, dict) else None


# -- output paths, checked before any work --------------------------------------------------
def file_key(path: Path) -> str:
    """One spelling per file: absolute, symlinks in folders resolved, case folded (a file
    system that ignores case makes ``A.png`` and ``a.png`` one file)."""
    return os.path.normcase(str(path.parent.resolve() / path.name)).casefold()


def check_outputs(outputs: Iterable[tuple[str, Path]], inputs: Iterable[PathLike] = ()) -> None:
    """Refuse, in one line, outputs that would overwrite an input or each other, that are
    folders, or whose folder cannot be written. ``outputs`` are (role, path) pairs, the role
    as the user gave it ("-o", "--overlay")."""
    inputs = [Path(p) for p in inputs]
    input_keys = {file_key(p) for p in inputs}
    input_files = {_identity(p) for p in inputs} - {None}  # links and other names of an input too
    seen: dict[str, str] = {}
    writable: dict[Path, bool] = {}
    for role, path in outputs:
        path = Path(path)
        key = file_key(path)
        if key in input_keys or _identity(path) in input_files:
            raise ValueError(f"{role} {str(path)!r} is an input file: choose another output name")
        if key in seen:
            raise ValueError(f"{seen[key]} and {role} are the same file {str(path)!r}: give each its own name")
        seen[key] = role
        if path.is_dir():
            raise ValueError(f"{role} {str(path)!r} is a folder: give a file name")
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if folder not in writable:
            writable[folder] = folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)
        if not writable[folder]:
            raise ValueError(f"{role} {str(path)!r} cannot be written: {str(folder)!r} is not a writable folder")


def _identity(path: Path) -> Optional[tuple[int, int]]:
    """(device, inode) of an existing file, followed through links; None when there is none."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def check_suffix(role: str, path: Path, allowed: tuple[str, ...], why: str = "") -> None:
    """The output format comes from the extension: refuse extensions this output cannot take."""
    if path.suffix.lower() not in allowed:
        raise ValueError(f"{role} {str(path)!r}: use {', '.join(allowed)}{why}")
