"""Shapes world v2: scenes at RefCOCO's proportions, for a proxy editing model that can tell
whether the method transfers.

128×128 RGB scenes (32×32 latents with a ×4 VAE, so InstructPix2Pix's 16/32-of-64 prior grids
become 8/16-of-32) hold 2–6 objects, each covering 5–35 % of the image before occlusion (RefCOCO's referred
objects commonly cover 10–40 %), that may occlude one another, on a shaded, cluttered, noisy
background. Objects have a shape, a colour and a pattern (plain, striped, dotted); expressions
name one object by colour and shape, shape, colour, pattern, or a relation to its twin (left,
right, top, bottom, bigger, smaller). Each sample carries a caption of the whole scene (for the
text-to-image stage), an edit instruction (recolour the named object), the edited target, and
the visible mask of every object. numpy only; deterministic per seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from napari_editseg import shapes_world
from napari_editseg.shapes_world import with_other_expressions  # noqa: F401  (the control, the same in either world)

SIZE = 128
COLOURS = {
    "red": (0.85, 0.15, 0.15),
    "green": (0.15, 0.65, 0.25),
    "blue": (0.18, 0.30, 0.88),
    "yellow": (0.93, 0.83, 0.15),
    "purple": (0.55, 0.22, 0.70),
    "orange": (0.95, 0.52, 0.10),
}
SHAPES = ("circle", "square", "triangle", "diamond", "ring", "cross")
PATTERNS = ("plain", "striped", "dotted")
RELATIONS = ("left", "right", "top", "bottom", "bigger", "smaller")
KINDS = ("colour+shape", "shape", "colour", "pattern", "spatial")
CONNECTIVES = ("a", "and", "with")
WORDS = ("make", "the") + tuple(COLOURS) + SHAPES + PATTERNS[1:] + RELATIONS + CONNECTIVES
TUNE_SEEDS = 9_000_000  # training uses seeds below; reported numbers use TEST_SEEDS and up
TEST_SEEDS = 10_000_000


@dataclass(frozen=True)
class Object:
    shape: str
    colour: str
    pattern: str
    row: float
    col: float
    radius: float

    def words(self) -> str:
        """How a caption names it: pattern (unless plain), colour, shape."""
        return " ".join(([self.pattern] if self.pattern != "plain" else []) + [self.colour, self.shape])


@dataclass
class Sample:
    image: np.ndarray  # uint8 H×W×3
    target: np.ndarray  # uint8 H×W×3: the scene after the edit
    caption: str  # the whole scene, for text-to-image training
    expression: str
    instruction: str
    new_colour: str
    kind: str
    mask: np.ndarray  # bool H×W: the referred object's visible pixels
    masks: list  # visible pixels of every object, drawing order
    index: int
    objects: list


def shape_mask(obj: Object, size: int = SIZE) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size].astype(np.float32) + 0.5
    dy, dx, r = rows - obj.row, cols - obj.col, obj.radius
    if obj.shape == "circle":
        return dy ** 2 + dx ** 2 <= r ** 2
    if obj.shape == "ring":
        d2 = dy ** 2 + dx ** 2
        return (d2 <= r ** 2) & (d2 >= (0.55 * r) ** 2)
    if obj.shape == "square":
        return (np.abs(dy) <= 0.85 * r) & (np.abs(dx) <= 0.85 * r)
    if obj.shape == "diamond":
        return np.abs(dy) + np.abs(dx) <= 1.1 * r
    if obj.shape == "cross":
        arm = 0.33 * r
        return ((np.abs(dy) <= r) & (np.abs(dx) <= arm)) | ((np.abs(dx) <= r) & (np.abs(dy) <= arm))
    top, bottom = -r, 0.7 * r  # triangle pointing up
    width = (dy - top) / (bottom - top) * r * 1.1
    return (dy >= top) & (dy <= bottom) & (np.abs(dx) <= width)


def _pattern(obj: Object, size: int) -> np.ndarray:
    """Where the pattern darkens the object's colour."""
    rows, cols = np.mgrid[:size, :size]
    if obj.pattern == "striped":
        return ((rows + cols) // 5) % 2 == 0  # diagonal bands
    if obj.pattern == "dotted":
        return ((rows % 8 - 3.5) ** 2 + (cols % 8 - 3.5) ** 2) <= 5.0
    return np.zeros((size, size), bool)


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Shaded grey with muted clutter (thin strokes and specks no expression names) and noise."""
    rows, cols = np.mgrid[:size, :size] / size
    angle = rng.uniform(0, 2 * np.pi)
    shade = rng.uniform(0.35, 0.6) + rng.uniform(0.05, 0.2) * (np.cos(angle) * rows + np.sin(angle) * cols - 0.5)
    image = np.repeat(shade[..., None], 3, axis=2) + rng.uniform(-0.04, 0.04, 3)
    for _ in range(int(rng.integers(3, 9))):
        tone = np.clip(shade.mean() + rng.uniform(-0.18, 0.18) + rng.uniform(-0.04, 0.04, 3), 0, 1)
        if rng.random() < 0.5:  # a thin stroke
            r0, c0 = rng.uniform(0, size, 2)
            theta = rng.uniform(0, np.pi)
            d = np.abs((np.mgrid[:size, :size][0] - r0) * np.cos(theta) - (np.mgrid[:size, :size][1] - c0)
                       * np.sin(theta))
            image[d <= rng.uniform(0.6, 1.5)] = tone
        else:  # a small speck
            r0, c0 = rng.uniform(0, size, 2)
            speck = (np.mgrid[:size, :size][0] - r0) ** 2 + (np.mgrid[:size, :size][1] - c0) ** 2 <= rng.uniform(
                2, 9) ** 2
            image[speck] = tone
    return image + rng.normal(0.0, 0.03, image.shape)


def render(objects: list, colours: list, size: int, state: int) -> tuple[np.ndarray, list]:
    """The scene drawn back to front in the given colours, and every object's visible mask.

    The same ``state`` gives the same background and texture, so a scene and its edit differ
    only where a colour changed."""
    rng = np.random.default_rng(state)
    image = background(rng, size)
    texture = rng.normal(0.0, 0.025, (size, size, 3))
    visible = []
    for obj, colour in zip(objects, colours):
        m = shape_mask(obj, size)
        base = np.asarray(COLOURS[colour])
        layer = np.where(_pattern(obj, size)[..., None], base * 0.55, base) + texture
        image[m] = layer[m]
        visible = [v & ~m for v in visible] + [m]
    return (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8), visible


def _count(objects: list, key, value) -> int:
    return sum(key(o) == value for o in objects)


def _expression(rng, kind: str, objects: list, target: Object) -> Optional[str]:
    """An expression of ``kind`` naming exactly ``target`` among ``objects``, or None."""
    def unique(key) -> bool:
        return _count(objects, key, key(target)) == 1

    if kind == "colour+shape" and unique(lambda o: (o.colour, o.shape)):
        return f"{target.colour} {target.shape}"
    if kind == "shape" and unique(lambda o: o.shape):
        return target.shape
    if kind == "colour" and unique(lambda o: o.colour):
        return target.colour
    if kind == "pattern" and target.pattern != "plain" and unique(lambda o: (o.pattern, o.colour, o.shape)) \
            and _count(objects, lambda o: (o.colour, o.shape), (target.colour, target.shape)) >= 2:
        return f"{target.pattern} {target.colour} {target.shape}"  # told from a same-coloured twin by its pattern
    if kind == "spatial":
        twins = [o for o in objects if o is not target and (o.colour, o.shape, o.pattern) ==
                 (target.colour, target.shape, target.pattern)]
        if len(twins) == 1:
            relation = shapes_world.spatial_relation(rng, target, twins[0], margin=12)
            if relation:
                return f"{relation} {target.words()}"
    return None


def _scene(rng, kind: str, size: int) -> Optional[tuple[list, int]]:
    """Objects placed back to front with bounded occlusion, and the referred one's index."""
    n = int(rng.integers(2, 7))
    pairs = [(str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS))), str(rng.choice(PATTERNS, p=[0.6, 0.2, 0.2])))
             for _ in range(n)]
    if kind in ("pattern", "spatial"):  # plant the twin the expression needs
        other = [p for p in PATTERNS if p != pairs[0][2]]
        pairs[1] = pairs[0] if kind == "spatial" else (pairs[0][0], pairs[0][1], str(rng.choice(other)))
        if kind == "pattern" and pairs[0][2] == "plain":
            pairs[0], pairs[1] = pairs[1], pairs[0]  # the target carries the pattern
    fractions = rng.uniform(0.05, 0.35, n)
    if fractions.sum() > 0.9:
        fractions *= 0.9 / fractions.sum()
    radii = np.sqrt(fractions * size * size / np.pi)
    objects: list = []
    for (shape, colour, pattern), radius in zip(pairs, radii):
        row, col = rng.uniform(radius * 0.7, size - radius * 0.7, 2)
        objects.append(Object(shape, colour, pattern, float(row), float(col), float(radius)))
    return objects, 0


def make_sample(seed: int, size: int = SIZE, kind: Optional[str] = None) -> Sample:
    """One scene, caption, expression, edit and masks from ``seed`` (deterministic)."""
    rng = np.random.default_rng(seed)
    kind = kind or str(rng.choice(KINDS))
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    for _ in range(2000):
        objects, referred = _scene(rng, kind, size)
        order = rng.permutation(len(objects))  # drawing order: who occludes whom
        objects = [objects[i] for i in order]
        index = int(np.flatnonzero(order == referred)[0])
        full = [shape_mask(o, size) for o in objects]
        state = int(rng.integers(2 ** 31))
        image, visible = render(objects, [o.colour for o in objects], size, state)
        # every object keeps most of itself (nothing hides a named thing), the referred one 70 %
        shares = [v.sum() / max(f.sum(), 1) for v, f in zip(visible, full)]
        if min(shares) < 0.5 or shares[index] < 0.7:
            continue
        expression = _expression(rng, kind, objects, objects[index])
        if expression is None:
            continue
        break
    else:  # pragma: no cover - the loop finds a scene within a few tries
        raise RuntimeError("could not build a scene")
    new_colour = str(rng.choice([c for c in COLOURS if c != objects[index].colour]))
    colours = [o.colour for o in objects]
    colours[index] = new_colour
    target, _ = render(objects, colours, size, state)
    by_position = sorted(objects, key=lambda o: o.col)  # captions read left to right
    names = [f"a {o.words()}" for o in by_position]
    caption = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return Sample(image=image, target=target, caption=caption, expression=expression,
                  instruction=f"make the {expression} {new_colour}", new_colour=new_colour, kind=kind,
                  mask=visible[index], masks=visible, index=index, objects=objects)


def held_out(n: int, start: int = TEST_SEEDS, size: int = SIZE) -> list:
    """``n`` scenes, the expression kinds in turn (balanced)."""
    return [make_sample(start + i, size, KINDS[i % len(KINDS)]) for i in range(n)]


def with_absent_expressions(samples: list, seed: int = 0) -> list:
    """Each scene with a colour+shape combination that no object of it has."""
    return shapes_world.with_absent_expressions(samples, seed, COLOURS, SHAPES)
