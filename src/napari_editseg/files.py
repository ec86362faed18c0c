"""Reading pictures and writing label images, shared by the CLI, batch labelling and evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_image(path) -> np.ndarray:
    """PNG, JPEG, TIFF and what else scikit-image reads; one clear ValueError otherwise."""
    from skimage import io

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"image file {str(path)!r} does not exist")
    try:
        return np.asarray(io.imread(file))
    except Exception as error:  # every reader fails its own way; the user needs one line
        raise ValueError(f"could not read {str(path)!r} as an image ({type(error).__name__}: "
                         f"{' '.join(str(error).split())[:200]})") from None


def write_labels(path, labels: np.ndarray) -> None:
    """A label image as it is (TIFF via tifffile, PNG via scikit-image); folders are created."""
    from skimage import io

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(path, labels)
    else:
        io.imsave(path, labels, check_contrast=False)
