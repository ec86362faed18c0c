"""One catalogue of sample pictures: the CLI's ``--sample``, napari's sample menu, the widget's hints.

scikit-image ships these pictures (no download); ``shapes`` is a scene of the procedural
shapes world, for the trained demo model in ``benchmarks/shapes_world/checkpoint``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The plugin's display name in napari (napari.yaml's display_name: a test keeps them equal),
# and so the menu where its samples are.
PLUGIN_NAME = "EditSeg"
SAMPLE_MENU = f"File > Open Sample > {PLUGIN_NAME}"
SHAPES_SCENE = 11_000_118  # a held-out scene: a red circle and a green triangle


@dataclass(frozen=True)
class Sample:
    title: str  # how napari's menu names it
    expression: str  # something to ask for in it
    in_menu: bool = False  # offered in napari's File > Open Sample

    @property
    def menu_title(self) -> str:
        return f'{self.title} (try "{self.expression}")'


SAMPLES = {
    "astronaut": Sample("Astronaut", "the woman's face", in_menu=True),
    "coffee": Sample("Coffee", "the cup", in_menu=True),
    "chelsea": Sample("Chelsea the cat", "the cat", in_menu=True),
    "shapes": Sample("Shapes world scene", "red circle", in_menu=True),
    "camera": Sample("Camera man", "the man with the camera"),
    "rocket": Sample("Rocket", "the rocket"),
    "coins": Sample("Coins", "the coin at the top left"),
    "horse": Sample("Horse", "the horse"),
    "retina": Sample("Retina", "the optic disc"),
    "immunohistochemistry": Sample("Immunohistochemistry", "the brown stained cells"),
}
MENU_SAMPLES = tuple(name for name, sample in SAMPLES.items() if sample.in_menu)


def check_sample(name: str) -> None:
    """One line for an unknown name, before anything is loaded."""
    if name not in SAMPLES:
        raise ValueError(f"unknown sample {name!r}; samples: {', '.join(SAMPLES)}")


def sample_image(name: str) -> np.ndarray:
    """The picture called ``name`` (H×W or H×W×3 uint8)."""
    from skimage import data

    check_sample(name)
    if name == "shapes":
        from .shapes_world import make_sample

        return make_sample(SHAPES_SCENE).image
    return getattr(data, name)()
