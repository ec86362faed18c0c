"""Every hyper-parameter of the method, by the name ``docs/method.md`` gives it.

Settings that name sizes or UNet blocks default to ``"auto"``: they are resolved
from the loaded model's configs (see :mod:`napari_editseg.core.model`) so that the
same defaults work on InstructPix2Pix and on any other UNet layout. The resolved
values are what a :class:`~napari_editseg.core.segmenter.Segmentation` records.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Union

AUTO = "auto"
Auto = Literal["auto"]


def _setting(default: Any, help: str, stage: str) -> Any:
    return field(default=default, metadata={"help": help, "stage": stage})


# Stages a setting belongs to. refine() may only change "discriminate" settings
# (method steps 6-7), which re-run on cached features and prior; the others
# shape the UNet forward or the prior and need segment().
FORWARD = "forward"
DISCRIMINATE = "discriminate"


@dataclass(frozen=True)
class SegmentationSettings:
    """Hyper-parameters of one-step referring segmentation (see docs/method.md)."""

    resolution: Union[int, Auto] = _setting(
        AUTO, "long side (pixels) the image is resized to; auto = UNet sample_size x VAE factor (512)", FORWARD
    )
    keep_aspect: bool = _setting(True, "keep the aspect ratio when resizing (False: square)", FORWARD)
    size_multiple: Union[int, Auto] = _setting(
        AUTO, "both sides are rounded to a multiple of this; auto = VAE factor x 2^(levels-1) (64)", FORWARD
    )
    instruction_template: str = _setting(
        "make the {} red", "edit instruction; {} is replaced by the expression", FORWARD
    )
    timestep: Union[int, Auto] = _setting(
        AUTO, "timestep of the one UNet forward; auto = the scheduler's first (earliest) step", FORWARD
    )
    seed: int = _setting(0, "seed of the Gaussian noise latent", FORWARD)
    noise_samples: int = _setting(1, "noise draws averaged in one batch", FORWARD)
    prior_resolutions: Union[tuple[int, ...], Auto] = _setting(
        AUTO, "latent sides of the cross-attention layers used for the prior; auto = latent/4, latent/2 (16,32)",
        FORWARD,
    )
    prior_layers: Literal["all", "decoder"] = _setting(
        "all", "which cross-attention layers at prior_resolutions make the prior: all (encoder and decoder) "
        "or decoder (up-blocks only)", FORWARD,
    )
    prior_source: Literal["attention", "relevance", "fused"] = _setting(
        "relevance", "where the prior comes from: attention (cross-attention to the expression, the paper's), "
        "relevance (the instruction's effect on the UNet's output against an empty text, as Watch-Your-Steps) "
        "or fused (both, where they agree)", FORWARD,
    )
    relevance_from: Literal["noise", "features"] = _setting(
        "features", "relevance read from the noise prediction (whole UNet) or from the feature blocks' outputs "
        "(stops at the early-exit point)", FORWARD,
    )
    relevance_baseline: Literal["empty", "template"] = _setting(
        "template", "what the instruction is compared with: the empty text (Watch-Your-Steps) or the template "
        "without the expression (only the expression's own effect)", FORWARD,
    )
    token_norm: Literal["none", "softmax", "contrast"] = _setting(
        "none", "attention columns as captured (none), re-softmaxed over the instruction's word tokens with "
        "start/end/padding dropped (softmax), or minus the template words' mean (contrast)", FORWARD,
    )
    token_scale: float = _setting(100.0, "token_norm=softmax: probabilities times this before the re-softmax",
                                  FORWARD)
    token_reduce: Literal["mean", "max"] = _setting(
        "mean", "how the expression tokens' attention maps are combined: mean or max", FORWARD
    )
    affinity_resolution: Union[int, Auto] = _setting(
        AUTO, "latent side of the self-attention used for propagation; auto = latent/2 (32)", FORWARD
    )
    propagation_steps: int = _setting(2, "k in P = A^k P0 (0 = no propagation)", FORWARD)
    feature_blocks: Union[tuple[str, ...], Auto] = _setting(
        AUTO, "UNet blocks whose outputs are the features; auto = the two up-blocks before the last", FORWARD
    )
    work_resolution: Union[int, Auto] = _setting(
        AUTO, "side of the grid the prior and features are compared on; auto = latent side (64)", FORWARD
    )
    fg_select: Literal["quantile", "otsu", "peak", "both"] = _setting(
        "both", "which pixels make the foreground prototype: P >= its fg_quantile (a fixed share of the image), "
        "P above Otsu's threshold of P (adapts to the object's size), peak (the part of those at P's maximum) "
        "or both (above Otsu's threshold AND in the fg_quantile share)", DISCRIMINATE,
    )
    fg_quantile: float = _setting(0.90, "pixels with prior >= this quantile define the foreground prototype",
                                  DISCRIMINATE)
    bg_quantile: float = _setting(0.50, "pixels with prior <= this quantile define the background prototypes",
                                  DISCRIMINATE)
    bg_prototypes: int = _setting(5, "background prototypes (k-means clusters of background features)",
                                  DISCRIMINATE)
    temperature: float = _setting(10.0, "S = sigmoid(temperature * (s_fg - s_bg))", DISCRIMINATE)
    mask_threshold: float = _setting(0.5, "mask = S >= mask_threshold", DISCRIMINATE)
    edge_refine: Literal["none", "guided"] = _setting(
        "guided", "make S follow the image's edges at full resolution before thresholding: none (bilinear "
        "upsampling of the work grid) or guided (colour guided filter against the image)", DISCRIMINATE,
    )
    edge_radius: float = _setting(2.0, "guided filter window radius, in work-grid cells", DISCRIMINATE)
    edge_eps: float = _setting(1e-3, "guided filter regularisation: larger follows only stronger edges",
                               DISCRIMINATE)
    min_confidence: float = _setting(
        0.0, "below this confidence a result says nothing was found (Segmentation.found); the mask is kept",
        DISCRIMINATE,
    )
    keep: Literal["all", "peak"] = _setting(
        "peak", "all: every mask pixel; peak: only the connected parts holding the prior's maximum", DISCRIMINATE
    )
    fill_holes: bool = _setting(False, "fill holes in the mask", DISCRIMINATE)

    def __post_init__(self) -> None:
        for f in fields(self):
            _validate(f.name, getattr(self, f.name))

    def replace(self, **overrides: Any) -> "SegmentationSettings":
        """A copy with ``overrides`` applied; unknown names raise a ValueError."""
        check_names(overrides)
        return dataclasses.replace(self, **{k: _coerce(k, v) for k, v in overrides.items()})

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
        return [(f.name, f.default, f.metadata["help"]) for f in fields(cls)]


# The paper's method and our reference design as the first version shipped them; the defaults
# differ where the shapes world measured a win (docs/method.md, "Defaults and the evidence").
PAPER = {
    "prior_source": "attention", "token_norm": "none", "fg_select": "quantile", "bg_prototypes": 1,
    "edge_refine": "none", "keep": "all",
}
SETTING_NAMES = tuple(f.name for f in fields(SegmentationSettings))
DISCRIMINATE_SETTINGS = frozenset(
    f.name for f in fields(SegmentationSettings) if f.metadata["stage"] == DISCRIMINATE
)


def check_names(overrides: dict[str, Any]) -> None:
    for name in overrides:
        if name not in SETTING_NAMES:
            close = difflib.get_close_matches(name, SETTING_NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known settings: {', '.join(SETTING_NAMES)}"
            raise ValueError(f"unknown setting {name!r}{hint}")


def parse_setting(text: str) -> tuple[str, Any]:
    """Parse ``NAME=VALUE`` as typed on a command line into a typed value."""
    if "=" not in text:
        raise ValueError(f"setting {text!r} is not of the form NAME=VALUE")
    name, value = (part.strip() for part in text.split("=", 1))
    check_names({name: value})
    return name, _coerce(name, value)


_INT_OR_AUTO = {"resolution", "size_multiple", "timestep", "affinity_resolution", "work_resolution"}
_INTS = {"seed", "noise_samples", "propagation_steps", "bg_prototypes"}
_POSITIVE_FLOATS = {"temperature", "token_scale", "edge_radius", "edge_eps"}
_FLOATS = {"fg_quantile", "bg_quantile", "mask_threshold", "min_confidence"} | _POSITIVE_FLOATS
_BOOLS = {"keep_aspect", "fill_holes"}
_CHOICES = {
    "token_reduce": ("mean", "max"), "keep": ("all", "peak"), "prior_layers": ("all", "decoder"),
    "prior_source": ("attention", "relevance", "fused"), "relevance_from": ("noise", "features"),
    "relevance_baseline": ("empty", "template"),
    "token_norm": ("none", "softmax", "contrast"), "fg_select": ("quantile", "otsu", "peak", "both"),
    "edge_refine": ("none", "guided"),
}


def _coerce(name: str, value: Any) -> Any:
    """Accept strings (CLI, widget) and lists for every setting; leave typed values alone."""
    if isinstance(value, str):
        text = value.strip()
        if text == AUTO and name in _INT_OR_AUTO | {"prior_resolutions", "feature_blocks"}:
            return AUTO
        try:
            if name in _INT_OR_AUTO | _INTS:
                return int(text)
            if name in _FLOATS:
                return float(text)
        except ValueError:
            raise ValueError(f"setting {name!r}: {value!r} is not a number") from None
        if name in _BOOLS:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"setting {name!r}: {value!r} is not true/false")
        if name == "prior_resolutions":
            try:
                return tuple(int(p) for p in text.split(",") if p.strip())
            except ValueError:
                raise ValueError(f"setting {name!r}: {value!r} is not a comma-separated list of sides") from None
        if name == "feature_blocks":
            return tuple(p.strip() for p in text.split(",") if p.strip())
        return text
    if isinstance(value, list):
        return tuple(value)
    return value


def _validate(name: str, value: Any) -> None:
    def bad(why: str) -> ValueError:
        return ValueError(f"setting {name!r}={value!r}: {why}")

    if name in _INT_OR_AUTO:
        if value == AUTO:
            return
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("expected an integer or 'auto'")
        if value < 0 or (value == 0 and name != "timestep"):
            raise bad("must be positive")
    elif name in _INTS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("expected an integer")
        minimum = 0 if name in ("seed", "propagation_steps") else 1
        if value < minimum:
            raise bad(f"must be >= {minimum}")
    elif name in _FLOATS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("expected a number")
        if name in _POSITIVE_FLOATS:
            if not value > 0:
                raise bad("must be > 0")
        elif not 0.0 <= value <= 1.0:
            raise bad("must lie in [0, 1]")
    elif name in _BOOLS:
        if not isinstance(value, bool):
            raise bad("expected true or false")
    elif name in _CHOICES:
        if value not in _CHOICES[name]:
            raise bad(f"expected one of {', '.join(_CHOICES[name])}")
    elif name == "instruction_template":
        if not isinstance(value, str) or value.count("{}") != 1:
            raise bad("must be text holding exactly one '{}' where the expression goes")
    elif name == "prior_resolutions":
        if value == AUTO:
            return
        if not isinstance(value, tuple) or not value or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
        ):
            raise bad("expected 'auto' or one or more positive integers")
    elif name == "feature_blocks":
        if value == AUTO:
            return
        if not isinstance(value, tuple) or not value or not all(isinstance(v, str) and v for v in value):
            raise bad("expected 'auto' or one or more UNet block names")
