"""``napari-editseg``: the command line, on the same core as the Python API and the widget."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .core.model import DEFAULT_MODEL, ModelNotAvailableError
from .core.settings import SegmentationSettings, parse_setting

# scikit-image's pictures that ship with it (no download), with something to ask for
SAMPLES = {
    "astronaut": "the woman's face",
    "chelsea": "the cat",
    "coffee": "the cup",
    "camera": "the man with the camera",
    "rocket": "the rocket",
    "coins": "the coin at the top left",
    "horse": "the horse",
    "retina": "the optic disc",
    "immunohistochemistry": "the brown stained cells",
}


def settings_help() -> str:
    lines = ["settings (--set NAME=VALUE; defaults in brackets, 'auto' follows the model):"]
    for name, default, text in SegmentationSettings.help():
        lines.append(f"  {name} [{default}]\n      {text}")
    return "\n".join(lines)


def read_image(path: str) -> np.ndarray:
    """PNG, JPEG, TIFF and what else scikit-image reads, as a numpy array."""
    from skimage import io

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"image file {path!r} does not exist")
    try:
        return np.asarray(io.imread(file))
    except Exception as error:  # every reader fails its own way; the user needs one line
        raise ValueError(f"could not read {path!r} as an image ({type(error).__name__}: {error})") from None


def sample_image(name: str) -> np.ndarray:
    from skimage import data

    if name not in SAMPLES:
        raise ValueError(f"unknown sample {name!r}; samples: {', '.join(SAMPLES)}")
    return getattr(data, name)()


def write_mask(path: Path, mask: np.ndarray) -> None:
    """A label image the size of the input: 0 background, 255 (PNG/JPEG) or 1 (TIFF) object."""
    from skimage import io

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(path, mask.astype(np.uint8))
    else:
        io.imsave(path, (mask * 255).astype(np.uint8), check_contrast=False)


def overlay(image: np.ndarray, mask: np.ndarray, colour=(1.0, 0.1, 0.1), alpha: float = 0.5) -> np.ndarray:
    """The picture with the mask tinted, as uint8 RGB, for a quick look."""
    from .core.image import to_rgb_float

    rgb = to_rgb_float(image)
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(colour, np.float32)
    return (rgb * 255).round().astype(np.uint8)


def numbered(path: Optional[str], index: int, count: int) -> Optional[Path]:
    """``face.png`` for one expression; ``face-1.png``, ``face-2.png``… for several."""
    if path is None:
        return None
    p = Path(path)
    return p if count == 1 else p.with_name(f"{p.stem}-{index + 1}{p.suffix}")


def parse_settings(items: Sequence[str]) -> dict:
    return dict(parse_setting(item) for item in items)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"hub id or local diffusers folder (default: {DEFAULT_MODEL})")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", default="auto", help="auto (float16 on cuda, float32 elsewhere), float32, "
                                                        "float16, bfloat16")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="NAME=VALUE",
                        help="change a setting (repeatable; see the list below)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-editseg",
        description="Segment the object a sentence names, from one UNet forward of an image-editing model.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    segment = commands.add_parser(
        "segment",
        help="segment one image",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Segment what each expression names in IMAGE and write one mask per expression.",
        epilog=settings_help() + "\n\nsamples (--sample NAME): " + ", ".join(SAMPLES) +
        "\n\nexample:\n  napari-editseg segment --sample astronaut \"the woman's face\" -o face.png",
    )
    segment.add_argument("inputs", nargs="*", metavar="IMAGE EXPRESSION",
                         help="image file, then expression (without --sample); or only the expression")
    segment.add_argument("-e", "--expression", action="append", default=[],
                         help="an expression (repeatable: one mask each, the image encoded once)")
    segment.add_argument("--sample", help="use one of scikit-image's sample pictures instead of a file")
    segment.add_argument("-o", "--output", default="mask.png", help="mask file (PNG/TIFF; default mask.png)")
    segment.add_argument("--overlay", help="also write the picture with the mask tinted")
    segment.add_argument("--scores", help="also write the score map S (float32 .npy, image size)")
    segment.add_argument("--prior", help="also write the attention prior P (float32 .npy, image size)")
    add_model_arguments(segment)
    segment.set_defaults(run=run_segment)
    return parser


def run_segment(args: argparse.Namespace) -> int:
    inputs = list(args.inputs)
    if args.sample:
        image, source = sample_image(args.sample), f"sample {args.sample!r}"
    else:
        if not inputs:
            raise ValueError("give an IMAGE file (or --sample NAME) and an expression")
        source = inputs.pop(0)
        image = read_image(source)
    expressions = inputs + list(args.expression)
    if not expressions:
        raise ValueError("give at least one expression, e.g. \"the dog on the left\"")
    for expression in expressions:
        if not expression.strip():
            raise ValueError("an expression is empty: describe the object to segment")
    overrides = parse_settings(args.settings)
    SegmentationSettings().replace(**overrides)  # bad settings fail before the model loads

    from .core.segmenter import EditSegmenter

    start = time.perf_counter()
    segmenter = EditSegmenter.from_pretrained(args.model, device=args.device, dtype=args.dtype, **overrides)
    loaded = time.perf_counter()
    segmenter.set_image(image)
    for index, expression in enumerate(expressions):
        result = segmenter.segment(expression)
        mask_path = numbered(args.output, index, len(expressions))
        write_mask(mask_path, result.mask)
        if args.overlay:
            from skimage import io

            io.imsave(numbered(args.overlay, index, len(expressions)), overlay(image, result.mask),
                      check_contrast=False)
        for path, values in ((args.scores, result.scores), (args.prior, result.prior)):
            if path:
                np.save(numbered(path, index, len(expressions)), values)
        note = " (instruction truncated to fit the text encoder)" if result.truncated else ""
        print(f"{mask_path}: {result.area:.1%} of {source} for {expression!r}{note}")
    print(f"model {args.model} on {segmenter.device} loaded in {loaded - start:.1f} s; "
          f"{len(expressions)} expression(s) in {time.perf_counter() - loaded:.1f} s")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # Hub retries, deprecations and per-component loading bars are not the user's business;
    # huggingface_hub's own download bars stay.
    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()
    try:
        return args.run(args)
    except ModelNotAvailableError as error:
        print(f"napari-editseg: error: {error}", file=sys.stderr)
        return 3
    except (ValueError, OSError) as error:
        print(f"napari-editseg: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("napari-editseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
