"""napari's File > Open Sample entries, one function per menu sample of :mod:`.samples`.

napari.yaml names each function (``napari_editseg._sample_data:<name>``); a test checks
that the manifest and the catalogue agree.
"""

from __future__ import annotations

from .samples import MENU_SAMPLES, SAMPLES, sample_image


def open_sample(name: str) -> list:
    """One image layer, with the expression to try in its metadata."""
    return [(sample_image(name), {"name": name, "metadata": {"try": SAMPLES[name].expression}}, "image")]


def _opener(name: str):
    def opener() -> list:
        return open_sample(name)

    opener.__name__ = opener.__qualname__ = name
    opener.__doc__ = f"{SAMPLES[name].menu_title}."
    return opener


globals().update({name: _opener(name) for name in MENU_SAMPLES})
