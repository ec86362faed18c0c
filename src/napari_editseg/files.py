"""Writing results, shared by the CLI, batch labelling, evaluation and the widget's export.

Every file written for a user goes through :func:`atomic_path`: it is written under a
temporary name in its own folder and then moved over the destination in one step
(``os.replace``), so a kill, Ctrl-C or a full disk leaves either the old file or the new
one, never a truncated one; a symlink at the destination is replaced, not written through.
Outputs are checked before any work (:func:`check_outputs`): never an input under another
name. Reading pictures is :mod:`napari_editseg.image_files`.
"""

from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np

from .image_files import MAX_IMAGE_PIXELS, TIFF_SUFFIXES, read_image  # noqa: F401  (read here before)

PathLike = Union[str, "os.PathLike[str]"]
PARTIAL = ".partial"  # marks a temporary file of atomic_path; a kill may leave one behind
NAME_MAX = 255  # bytes of one file name on the usual file systems (ext4, XFS, APFS, NTFS in UTF-16 units)
PNG_LABEL_DTYPES = (np.uint8, np.uint16)  # a PNG holds 8- or 16-bit grey


# -- writing ------------------------------------------------------------------------------
@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix, so writers pick the same format); when
    the block ends without an exception it replaces ``path`` in one step, otherwise it is
    removed. Folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{_partial_prefix(path)}{secrets.token_hex(4)}{PARTIAL}{path.suffix}")
    try:
        yield temporary
        with open(temporary, "rb+") as handle:  # on disk before the name points at it
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def _partial_prefix(path: Path) -> str:
    """``.NAME.``, NAME cut (at a character boundary) so that a temporary name stays within NAME_MAX
    bytes however long a legal ``path`` name is."""
    room = NAME_MAX - len(f"..{'0' * 8}{PARTIAL}{path.suffix}".encode())
    name = path.name.encode()[:room].decode(errors="ignore")
    return f".{name}."


def remove_partials(path: PathLike) -> None:
    """Delete what a killed writer left of ``path``'s temporary files (never ``path`` itself)."""
    path = Path(path)
    prefix, end = _partial_prefix(path), f"{PARTIAL}{path.suffix}"
    if not path.parent.is_dir():
        return
    with os.scandir(path.parent) as entries:  # not glob: names may hold [, * and ?
        leftovers = [e.path for e in entries if e.name.startswith(prefix) and e.name.endswith(end)
                     and len(e.name) == len(prefix) + 8 + len(end)]
    for leftover in leftovers:
        Path(leftover).unlink(missing_ok=True)


def write_json(path: PathLike, data: Any) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=1))


def write_npy(path: PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as temporary:
        np.save(temporary, array)


def write_labels(path: PathLike, labels: np.ndarray, description: Optional[dict] = None) -> None:
    """A label image as it is (TIFF via tifffile, PNG via Pillow in 8 or 16 bits, else scikit-image).

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
            Image.fromarray(png_labels(labels)).save(temporary, pnginfo=info)
        else:
            from skimage import io

            io.imsave(temporary, labels, check_contrast=False)


def png_labels(labels: np.ndarray) -> np.ndarray:
    """Labels in the smallest unsigned type a PNG holds (8 or 16 bits); ValueError when they do not fit."""
    if labels.dtype == bool or labels.dtype in PNG_LABEL_DTYPES:
        return labels
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if low < 0 or high > np.iinfo(np.uint16).max:
        raise ValueError(f"labels {low} to {high} do not fit a PNG (0 to 65535): write a .tif")
    return labels.astype(np.uint8 if high <= np.iinfo(np.uint8).max else np.uint16)


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


def check_outputs(outputs: Iterable[tuple[str, PathLike]],
                  inputs: Iterable[Union[PathLike, tuple[str, PathLike]]] = ()) -> None:
    """Refuse, in one line, outputs that would overwrite an input or each other, that are
    folders, whose name is too long, or whose folder cannot be written.

    ``outputs`` are (role, path) pairs, the role as the user gave it ("-o", "--overlay");
    ``inputs`` are paths or (role, path) pairs. An output is an input when it has the same
    name (folders' links resolved, case folded) or is the same file by another name: a hard
    link, a symbolic link to it, a bind mount (same device and inode: ``os.path.samefile``).
    """
    named = [(None, Path(p)) if isinstance(p, (str, os.PathLike)) else (p[0], Path(p[1])) for p in inputs]
    by_key = {file_key(p): role for role, p in named}
    by_file = {identity: role for role, identity in ((r, _identity(p)) for r, p in named) if identity is not None}
    seen: dict[str, str] = {}
    writable: dict[Path, bool] = {}
    for role, path in outputs:
        path = Path(path)
        key = file_key(path)
        if key in by_key or _identity(path) in by_file:
            what = by_key.get(key) or by_file.get(_identity(path))
            raise ValueError(f"{role} {str(path)!r} is {f'the {what} file' if what else 'an input file'} (the same "
                             "file, a link to it or another name of it): choose another output name")
        if key in seen:
            raise ValueError(f"{seen[key]} and {role} are the same file {str(path)!r}: give each its own name")
        seen[key] = role
        if len(path.name.encode()) > NAME_MAX:
            raise ValueError(f"{role} {str(path)!r}: the name is {len(path.name.encode())} bytes long, more than the "
                             f"{NAME_MAX} a file name may have")
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


# -- text for a terminal --------------------------------------------------------------------
def printable(text: object) -> str:
    """``text`` safe to echo to a terminal: control characters (escape sequences, carriage returns,
    bidirectional overrides) shown as Python escapes, so a record or a file name cannot rewrite
    the screen or hide what it says."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
