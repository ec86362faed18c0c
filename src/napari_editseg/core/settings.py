"""Every hyper-parameter of the method, by the name ``docs/method.md`` gives it.

Each setting is declared once, below, as a field of :class:`SegmentationSettings`: its type
(and, for a ``Literal``, its choices) in the annotation; its default, help, stage and range in
the field. :data:`SETTING_SPECS` is derived from those declarations, and everything else reads
it: validation, parsing of command-line text, the CLI's help, and a widget's controls
(:class:`SettingSpec` has the kind, choices, range and help a control needs). Combinations of
values that contradict each other are listed once too (:data:`COMBINATIONS`).

Settings that name sizes or blocks of the denoiser default to ``"auto"``: each family's layout
resolves them from the loaded model's configs (see :mod:`napari_editseg.core.backbones`) so that
the same defaults work on every family and layout. The resolved
values are what a :class:`~napari_editseg.core.segmenter.Segmentation` records.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Literal, Optional, Union

AUTO = "auto"
Auto = Literal["auto"]


def _setting(
    default: Any,
    help: str,
    stage: str,
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
    above: bool = False,
    rule: Optional[Callable[[Any], Optional[str]]] = None,
) -> Any:
    """A settings field; ``minimum``/``maximum`` bound numbers (``above``: strictly above the
    minimum), ``rule`` returns why a value is refused (or None) for what a range cannot say."""
    return field(default=default, metadata={
        "help": help, "stage": stage, "minimum": minimum, "maximum": maximum, "above": above, "rule": rule,
    })


def _one_placeholder(value: str) -> Optional[str]:
    return None if value.count("{}") == 1 else "must be text holding exactly one '{}' where the expression goes"


# Stages a setting belongs to. refine() may only change "discriminate" settings
# (method steps 6-7), which re-run on cached features and prior; the others need segment():
# "forward" settings shape the denoiser forward itself (its rows, its capture, what it keeps),
# "prior" settings only how step 5 reads what the forward captured.
FORWARD = "forward"
PRIOR = "prior"
DISCRIMINATE = "discriminate"


@dataclass(frozen=True)
class SegmentationSettings:
    """Hyper-parameters of one-step referring segmentation (see docs/method.md)."""

    resolution: Union[int, Auto] = _setting(
        AUTO, "long side (pixels) the image is resized to; auto = the model's own size (512 for InstructPix2Pix)",
        FORWARD,
        minimum=1, maximum=8192,
    )
    keep_aspect: bool = _setting(True, "keep the aspect ratio when resizing (False: square)", FORWARD)
    tiling: Literal["auto", "off", "always"] = _setting(
        AUTO, "large images, coarse to fine: a pass on the whole image at resolution, then the tiles where it "
        "points run at full resolution and are stitched (always), or only the whole-image pass (off); auto = "
        "tiles when the long side exceeds 2048 pixels and 4 tile sides and at most 4096 tiles cover it",
        FORWARD,
    )
    tile_overlap: float = _setting(
        0.25, "tiling: share of a tile's side that overlaps its neighbour (context, and where their maps are "
        "blended)", FORWARD, minimum=0, maximum=0.5,
    )
    tile_size: Union[int, Auto] = _setting(
        AUTO, "tiling: image pixels a tile's side covers (each tile is resized to resolution for its forward); "
        "auto = resolution, tiles at the image's own scale. Larger tiles keep objects larger than the model's "
        "input whole: pick one a few times the objects' size", FORWARD, minimum=16, maximum=65536,
    )
    size_multiple: Union[int, Auto] = _setting(
        AUTO, "both sides are rounded to a multiple of this; auto = VAE factor x 2^(levels-1) (64)", FORWARD,
        minimum=1, maximum=8192,
    )
    instruction_template: str = _setting(
        "make the {} red", "edit instruction; {} is replaced by the expression", FORWARD, rule=_one_placeholder
    )
    timestep: Union[int, Auto] = _setting(
        AUTO, "timestep of the one denoiser forward; auto = the scheduler's first (earliest) step", FORWARD, minimum=0
    )
    seed: int = _setting(0, "seed of the Gaussian noise latent (and of the background k-means)", FORWARD,
                          minimum=0, maximum=2**32 - 1)
    noise_samples: int = _setting(1, "noise draws averaged in one batch", FORWARD, minimum=1, maximum=64)
    prior_resolutions: Union[tuple[int, ...], Auto] = _setting(
        AUTO, "latent sides of the cross-attention layers used for the prior; auto = latent/4, latent/2 (16,32)",
        FORWARD, minimum=1, maximum=4096,
    )
    prior_layers: Literal["all", "decoder"] = _setting(
        "all", "which cross-attention layers at prior_resolutions make the prior: all (encoder and decoder) "
        "or decoder (up-blocks only)", FORWARD,
    )
    prior_source: Literal["attention", "relevance", "fused"] = _setting(
        "relevance", "where the prior comes from: attention (cross-attention to the expression, the paper's), "
        "relevance (the instruction's effect on the denoiser's output against a baseline text, as Watch-Your-Steps) "
        "or fused (both, where they agree)", PRIOR,
    )
    relevance_from: Literal["noise", "features"] = _setting(
        "features", "relevance read from the noise prediction (the whole denoiser runs) or from the feature "
        "blocks' outputs (stops at the early-exit point)", FORWARD,
    )
    relevance_baseline: Literal["empty", "template"] = _setting(
        "template", "what the instruction is compared with: the empty text (Watch-Your-Steps) or the template "
        "without the expression (only the expression's own effect)", FORWARD,
    )
    token_norm: Literal["none", "softmax", "contrast"] = _setting(
        "none", "attention columns as captured (none), re-softmaxed over the instruction's word tokens with "
        "start/end/padding dropped (softmax), or minus the template words' mean (contrast)", PRIOR,
    )
    token_scale: float = _setting(100.0, "token_norm=softmax: probabilities times this before the re-softmax",
                                  PRIOR, minimum=0, above=True)
    token_reduce: Literal["mean", "max"] = _setting(
        "mean", "how the expression tokens' attention maps are combined: mean or max", PRIOR
    )
    affinity_resolution: Union[int, Auto] = _setting(
        AUTO, "latent side of the self-attention used for propagation; auto = latent/2 (32)", FORWARD,
        minimum=1, maximum=4096,
    )
    propagation_steps: int = _setting(
        2, "k in P = A^k P0; 0 = no propagation at all (restart, smooth_steps and prior_pick then have nothing to "
        "act on)", PRIOR, minimum=0, maximum=64)
    restart: float = _setting(
        0.15, "the anchored propagation: a random walk with restart, P <- (1-restart)·A·P + restart·P0 iterated to "
        "its fixed point (personalised PageRank), spreads the prior over what the self-attention joins to P0's "
        "places but cannot carry it off them; 0 = the paper's P = A^k P0 only (smooth_steps and prior_pick then "
        "have nothing to act on)", PRIOR, minimum=0, maximum=1,
    )
    restart_share: Union[float, Auto] = _setting(
        AUTO, "the share of P0's cells, its highest, that the walk with restart restarts at (the rest set to zero), "
        "so that P0's weaker places elsewhere pull it nowhere; 1 = all of P0; auto = 0.1 for one object, 1 with "
        "instances (there P0's weaker places are the other objects)", PRIOR, minimum=0, maximum=1, above=True,
    )
    smooth_steps: int = _setting(
        1, "plain propagation steps after the walk's fixed point (A^s times it), which drop the raw P0 the walk "
        "keeps; 0 = the fixed point as it is", PRIOR, minimum=0, maximum=64,
    )
    prior_pick: Union[Literal["fixed", "contrast"], Auto] = _setting(
        AUTO, "auto = fixed for one object, contrast with instances; contrast: per image, steps 6-7 with both the "
        "paper's A^k P0 and the anchored walk (restart, smooth_steps), keeping the prior whose mask's scores stand "
        "out most from the rest (which propagation suits differs between models); fixed: the anchored walk always "
        "(restart > 0) or A^k P0 (restart 0)", PRIOR,
    )
    peak_links: float = _setting(
        0.0, "keep=peak: the mask's part kept is the one at the peak of a second walk (the same restart and steps) "
        "over the affinity with, per cell, only its links to this share of the cells whose features are most alike "
        "(links between unlike cells, often different objects, cut), so the walk's peak stays on one object; "
        "0 = the prior's own peak", PRIOR, minimum=0, maximum=1,
    )
    feature_blocks: Union[tuple[str, ...], Auto] = _setting(
        AUTO, "blocks whose outputs are the features; auto = the family's choice (InstructPix2Pix: the two "
        "up-blocks before the last)", FORWARD
    )
    attention_blocks: Union[tuple[str, ...], Auto] = _setting(
        AUTO, "diffusion transformers: the blocks whose joint attention gives the prior and the affinity; auto = "
        "resolved from the model's config (InstructPix2Pix and SDXL editors choose layers by prior_resolutions, "
        "prior_layers and affinity_resolution, and take only auto)", FORWARD,
    )
    image_tokens: Literal["auto", "target", "reference"] = _setting(
        AUTO, "editors that see the input image as tokens of its own (FLUX.1 Kontext): whose queries the prior, "
        "affinity and features are read from: target (the latents being edited) or reference (the input "
        "image's); auto = the family's choice (InstructPix2Pix and SDXL editors have target positions only)", FORWARD,
    )
    work_resolution: Union[int, Auto] = _setting(
        AUTO, "side of the grid the prior and features are compared on; auto = latent side (64)", PRIOR,
        minimum=1, maximum=4096,
    )
    fg_select: Literal["quantile", "otsu", "peak", "both"] = _setting(
        "both", "which pixels make the foreground prototype: P >= its fg_quantile (a fixed share of the image), "
        "P above Otsu's threshold of P (adapts to the object's size), peak (the part of those at P's maximum) "
        "or both (above Otsu's threshold AND in the fg_quantile share)", DISCRIMINATE,
    )
    fg_quantile: float = _setting(0.90, "pixels with prior >= this quantile define the foreground prototype",
                                  DISCRIMINATE, minimum=0, maximum=1)
    bg_quantile: float = _setting(0.50, "pixels with prior <= this quantile define the background prototypes",
                                  DISCRIMINATE, minimum=0, maximum=1)
    bg_prototypes: int = _setting(5, "background prototypes (k-means clusters of background features)",
                                  DISCRIMINATE, minimum=1, maximum=64)
    temperature: float = _setting(10.0, "S = sigmoid(temperature * (s_fg - s_bg))", DISCRIMINATE, minimum=0,
                                  above=True)
    mask_threshold: float = _setting(0.5, "mask = S >= mask_threshold", DISCRIMINATE, minimum=0, maximum=1)
    edge_refine: Literal["none", "guided"] = _setting(
        "guided", "make S follow the image's edges at full resolution before thresholding: none (bilinear "
        "upsampling of the work grid) or guided (colour guided filter against the image)", DISCRIMINATE,
    )
    edge_radius: float = _setting(2.0, "guided filter window radius, in work-grid cells", DISCRIMINATE, minimum=0,
                                  above=True)
    edge_eps: float = _setting(1e-3, "guided filter regularisation: larger follows only stronger edges",
                               DISCRIMINATE, minimum=0, above=True)
    decoys: int = _setting(
        0, "confidence from decoys: this many expressions of common words (as many as the expression has, drawn "
        "from the tokenizer's vocabulary with the seed) run as extra rows of the same forward; the confidence is "
        "the share of decoys whose raw effect on the features (against the baseline text) is below the "
        "expression's. 0 = how much P0's highest region dominates the next (peak dominance)", FORWARD,
        minimum=0, maximum=64,
    )
    min_confidence: float = _setting(
        0.0, "below this confidence a result says nothing was found (Segmentation.found); the mask is kept",
        DISCRIMINATE, minimum=0, maximum=1,
    )
    keep: Literal["all", "peak"] = _setting(
        "peak", "all: every mask pixel; peak: only the connected parts holding the prior's maximum", DISCRIMINATE
    )
    fill_holes: bool = _setting(False, "fill holes in the mask", DISCRIMINATE)
    instances: bool = _setting(
        False, "one label per object: the mask split into the objects it holds, each with its own score "
        "(keep is then read as all: every object the words name is kept)", DISCRIMINATE,
    )
    instance_split: Literal["watershed", "components"] = _setting(
        "watershed", "instances: how objects are told apart: components (each connected part of the mask is one "
        "object) or watershed (touching objects inside a part are also split, at the saddles of distance to the "
        "mask's edge x score)", DISCRIMINATE,
    )
    split_depth: float = _setting(
        0.25, "instances, watershed: how deep the saddle between two peaks must be, as a share of the part's "
        "highest peak, for them to be two objects (larger: fewer splits)", DISCRIMINATE, minimum=0, maximum=1,
    )
    min_instance_size: int = _setting(20, "instances: objects of fewer pixels are dropped", DISCRIMINATE,
                                      minimum=1)
    min_instance_score: float = _setting(
        0.2, "instances: objects scoring lower are dropped (score: mean S inside x the prior's maximum inside over "
        "its maximum: what the prior never looked at scores low; 0.2 chosen on the shapes world's tuning scenes)",
        DISCRIMINATE,
        minimum=0, maximum=1,
    )
    exemplar_cue: Literal["features", "colour", "both"] = _setting(
        "both", "existing labels as prompts: what makes a place look like the exemplars: the model's "
        "features, the picture's colour (mean-centred: which colour, or brighter/darker in a grey picture), or "
        "both (where the two agree; chosen on the proxy population, docs/shapes-world.md)", PRIOR,
    )
    exemplar_size: float = _setting(
        2.0, "existing labels as prompts: objects found are kept only when their area lies within this factor "
        "of the exemplars' (from the smallest / factor to the largest x factor); 0 = any size",
        DISCRIMINATE, minimum=0,
    )
    exemplar_colour: bool = _setting(
        True, "existing labels as prompts: where the exemplars share a colour, objects the features found in "
        "another colour are dropped, and so is what stands out from its surroundings less than half as much as "
        "the least contrasted exemplar (chosen on the proxy population, docs/shapes-world.md)", DISCRIMINATE,
    )
    exemplar_regions: bool = _setting(
        True, "existing labels as prompts: also add the image's regions (segment everything's) whose colour, "
        "form and size lie within the exemplars' range: what the exemplars share (a colour, a form) must match, "
        "what they differ in may vary (finds objects of a kind whose colour no exemplar has; chosen on the "
        "proxy population, docs/shapes-world.md)", PRIOR,
    )
    exemplar_granularity: int = _setting(
        48, "existing labels as prompts: the alike regions also come from a second clustering of the features "
        "into this many kinds, joining where the first (granularity's) left room: an object cut or run together "
        "in one is often whole in the other; 0 = granularity's alone (chosen on the proxy population, "
        "docs/shapes-world.md)", PRIOR, minimum=0, maximum=64,
    )
    granularity: int = _setting(
        32, "segment everything: kinds of region the image's features are clustered into (more: finer regions)",
        DISCRIMINATE, minimum=1, maximum=64,
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            SETTING_SPECS[f.name].check(getattr(self, f.name))
        for combination in COMBINATIONS:
            combination.check(self)

    def replace(self, **overrides: Any) -> "SegmentationSettings":
        """A copy with ``overrides`` applied; unknown names raise a ValueError."""
        check_names(overrides)
        return dataclasses.replace(self, **{k: SETTING_SPECS[k].coerce(v) for k, v in overrides.items()})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def paper(cls, **overrides: Any) -> "SegmentationSettings":
        """The method as the paper describes it (cross-attention prior, fixed-share prototypes,
        one background prototype, the mask at the work grid's resolution): see ``PAPER``."""
        return cls().replace(**{**PAPER, **overrides})

    @classmethod
    def help(cls) -> list[tuple[str, Any, str]]:
        """(name, default, description) of every setting, for --help and docs."""
        return [(spec.name, spec.default, spec.help) for spec in SETTING_SPECS.values()]


@dataclass(frozen=True)
class SettingSpec:
    """One setting as declared: what a value may be, what it does, and which stage it shapes.

    ``kind`` is one of ``int``, ``float``, ``bool``, ``choice``, ``text``, ``sides`` (one or
    more positive integers) or ``blocks`` (one or more block names of the denoiser); ``auto`` says whether
    ``"auto"`` (resolved from the model) is accepted. ``minimum``/``maximum`` bound a number (or
    each side); ``above`` makes the minimum exclusive. A widget builds its controls from these.
    """

    name: str
    default: Any
    kind: str
    help: str
    stage: str
    choices: tuple[str, ...] = ()
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    above: bool = False
    auto: bool = False
    rule: Optional[Callable[[Any], Optional[str]]] = field(default=None, repr=False, compare=False)

    def describe(self) -> str:
        """The values this setting takes, in words ("number in [0, 1]", "one of mean, max")."""
        if self.kind == "choice":
            text = "one of " + ", ".join(self.choices)
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind == "text":
            text = "text"
        elif self.kind == "blocks":
            text = "block names, comma-separated"
        else:
            noun = {"int": "integer", "float": "number", "sides": "integers, comma-separated,"}[self.kind]
            text = f"{noun} {self._range()}"
        return text + (" or auto" if self.auto else "")

    def _range(self) -> str:
        low, high = _number_text(self.minimum), _number_text(self.maximum)
        if self.minimum is not None and self.maximum is not None:
            return f"in {'(' if self.above else '['}{low}, {high}]"
        if self.minimum is not None:
            return f"{'>' if self.above else '>='} {low}"
        return f"<= {high}" if self.maximum is not None else ""

    def coerce(self, value: Any) -> Any:
        """Typed value from text (CLI, widget), lists or numpy scalars; other values as given."""
        if hasattr(value, "dtype") and getattr(value, "shape", None) == ():  # a numpy scalar: np.float32(0.4)
            value = value.item()
        if isinstance(value, list):
            return tuple(v.item() if hasattr(v, "item") else v for v in value)
        if not isinstance(value, str):
            return value
        text = value.strip()
        if self.auto and text == AUTO:
            return AUTO
        try:
            if self.kind == "int":
                return int(text)
            if self.kind == "float":
                return float(text)
            if self.kind == "sides":
                return tuple(int(p) for p in text.split(",") if p.strip())
        except ValueError:
            what = "a comma-separated list of sides" if self.kind == "sides" else "a number"
            raise ValueError(f"setting {self.name!r}: {value!r} is not {what}") from None
        if self.kind == "bool":
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"setting {self.name!r}: {value!r} is not true/false")
        if self.kind == "blocks":
            return tuple(p.strip() for p in text.split(",") if p.strip())
        return text

    def check(self, value: Any) -> None:
        """Raise a ValueError naming the setting when ``value`` is not one it takes."""
        why = self._problem(value)
        if why:
            raise ValueError(f"setting {self.name!r}={value!r}: {why}")

    def _problem(self, value: Any) -> Optional[str]:
        if self.auto and value == AUTO:
            return None
        or_auto = " or 'auto'" if self.auto else ""
        if self.kind in ("int", "float"):
            integer = self.kind == "int"
            allowed = int if integer else (int, float)
            if isinstance(value, bool) or not isinstance(value, allowed):
                return f"expected {'an integer' if integer else 'a number'}{or_auto}"
            if not integer and not math.isfinite(value):
                return "expected a finite number"
            return self._out_of_range(value)
        if self.kind == "bool":
            return None if isinstance(value, bool) else "expected true or false"
        if self.kind == "choice":
            return None if value in self.choices else f"expected one of {', '.join(self.choices)}"
        if self.kind == "text":
            if not isinstance(value, str):
                return "expected text"
            return self.rule(value) if self.rule else None
        if self.kind == "sides":
            if not isinstance(value, tuple) or not value or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value
            ):
                return "expected 'auto' or one or more positive integers"
            return next((why for why in map(self._out_of_range, value) if why), None)
        if not isinstance(value, tuple) or not value or not all(isinstance(v, str) and v for v in value):
            return "expected 'auto' or one or more block names of the denoiser"
        return None

    def _out_of_range(self, value: float) -> Optional[str]:
        low = self.minimum is not None and (value <= self.minimum if self.above else value < self.minimum)
        high = self.maximum is not None and value > self.maximum
        if not (low or high):
            return None
        if self.minimum is not None and self.maximum is not None:
            return f"must lie in {self._range()[3:]}"
        return f"must be {self._range()}"


def _number_text(x: Optional[float]) -> str:
    return "" if x is None else f"{x:g}" if isinstance(x, float) else str(x)


def _spec(f: dataclasses.Field, annotation: Any) -> SettingSpec:
    """A field's spec, its kind and choices read from the annotation."""
    options = typing.get_args(annotation) if typing.get_origin(annotation) is Union else (annotation,)
    auto = Auto in options
    (kind_type,) = [o for o in options if o is not Auto]
    choices: tuple[str, ...] = ()
    if typing.get_origin(kind_type) is Literal:
        kind, choices = "choice", typing.get_args(kind_type)
    elif typing.get_origin(kind_type) is tuple:
        kind = "sides" if typing.get_args(kind_type)[0] is int else "blocks"
    else:
        kind = {bool: "bool", int: "int", float: "float", str: "text"}[kind_type]
    meta = f.metadata
    return SettingSpec(
        name=f.name, default=f.default, kind=kind, help=meta["help"], stage=meta["stage"], choices=choices,
        minimum=meta["minimum"], maximum=meta["maximum"], above=meta["above"], auto=auto, rule=meta["rule"],
    )


# restart_share "auto" for one object: the population's choice (docs/method.md; 0.2 until m3 joined)
ONE_OBJECT_SHARE = 0.1


def resolve_propagation(settings: SegmentationSettings) -> SegmentationSettings:
    """``restart_share`` and ``prior_pick`` "auto" by task. One object: the walk restarts at P0's top 10 %
    (decided on the proxy population for referring expressions); instance mode: all of P0 and the
    per-image pick, which the counting scenes measured better there (a cut at P0's top share drops
    the named objects P0 is weaker on)."""
    one = not settings.instances
    task = {"restart_share": ONE_OBJECT_SHARE if one else 1.0, "prior_pick": "fixed" if one else "contrast"}
    return settings.replace(**{name: value for name, value in task.items() if getattr(settings, name) == AUTO})


_HINTS = typing.get_type_hints(SegmentationSettings)
SETTING_SPECS: dict[str, SettingSpec] = {f.name: _spec(f, _HINTS[f.name]) for f in fields(SegmentationSettings)}


@dataclass(frozen=True)
class Combination:
    """Values of several settings that contradict each other, refused with one line."""

    names: tuple[str, ...]
    holds: Callable[[Any], bool]
    why: str

    def check(self, settings: Any) -> None:
        if not self.holds(settings):
            given = " and ".join(f"{n}={getattr(settings, n)!r}" for n in self.names)
            raise ValueError(f"settings {given} contradict each other: {self.why}")


COMBINATIONS = (
    Combination(("fg_quantile", "bg_quantile"), lambda s: s.fg_quantile > s.bg_quantile,
                "fg_quantile must lie above bg_quantile, or the foreground and background pixel sets overlap"),
)

# The paper's method and our reference design as the first version shipped them; the defaults
# differ where the shapes world measured a win (docs/method.md, "Defaults and the evidence").
PAPER = {
    "prior_source": "attention", "token_norm": "none", "fg_select": "quantile", "bg_prototypes": 1,
    "edge_refine": "none", "keep": "all", "restart": 0.0, "smooth_steps": 0, "prior_pick": "fixed", "peak_links": 0.0,
}
# What a record (napari_editseg.record) made before a setting existed was made with: the setting's
# behaviour then. A setting added since takes this value on replay, not today's default, so the
# labels come back as they were made (e.g. restart_share, added 2026-12-07, meant all of P0 before).
BEFORE_IT_EXISTED = {"tiling": "off", "restart": 0.0, "smooth_steps": 0, "prior_pick": "fixed", "restart_share": 1.0,
                     "peak_links": 0.0}
SETTING_NAMES = tuple(SETTING_SPECS)
DISCRIMINATE_SETTINGS = frozenset(name for name, spec in SETTING_SPECS.items() if spec.stage == DISCRIMINATE)
FORWARD_SETTINGS = tuple(name for name, spec in SETTING_SPECS.items() if spec.stage == FORWARD)


def setting_spec(name: str) -> SettingSpec:
    """The declared spec of one setting; unknown names raise a ValueError with a suggestion."""
    check_names({name: None})
    return SETTING_SPECS[name]


def check_names(overrides: dict[str, Any]) -> None:
    for name in overrides:
        if name not in SETTING_NAMES:
            close = difflib.get_close_matches(str(name), SETTING_NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known settings: {', '.join(SETTING_NAMES)}"
            raise ValueError(f"unknown setting {name!r}{hint}")


def parse_setting(text: str) -> tuple[str, Any]:
    """Parse ``NAME=VALUE`` as typed on a command line into a typed value."""
    if "=" not in text:
        raise ValueError(f"setting {text!r} is not of the form NAME=VALUE")
    name, value = (part.strip() for part in text.split("=", 1))
    return name, setting_spec(name).coerce(value)
