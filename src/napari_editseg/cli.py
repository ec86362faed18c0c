"""``napari-editseg``: the command line, on the same core as the Python API and the widget."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .core.instruction import normalise_expression
from .core.names import DEFAULT_MODEL, DEMO_MODEL
from .core.settings import SETTING_SPECS, SegmentationSettings, parse_setting
from .files import check_outputs, check_suffix, printable, write_labels, write_npy
from .image_files import parse_indices, read_array, read_image
from .large import ZARR_SUFFIXES
from .samples import SAMPLES, check_sample, sample_image

MASK_SUFFIXES = (".png", ".tif", ".tiff", ".npy")  # lossless: a mask must read back as it was
OVERLAY_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
MAP_SUFFIXES = (".npy",)
LABEL_SUFFIXES = (".tif", ".tiff", ".png")


def settings_help() -> str:
    """Every setting with its default, the values it takes and what it does, from its declaration."""
    lines = ["settings (--set NAME=VALUE; defaults in brackets, 'auto' follows the model):"]
    for spec in SETTING_SPECS.values():
        lines.append(f"  {spec.name} [{spec.default}]  {spec.describe()}\n      {spec.help}")
    return "\n".join(lines)


def write_mask(path: Path, mask: np.ndarray) -> None:
    """The mask at the image's size: 0/255 in PNG (visible in any viewer), 0/1 in TIFF, bool in .npy."""
    if path.suffix.lower() == ".npy":
        write_npy(path, mask.astype(bool))
        return
    scale = 1 if path.suffix.lower() in (".tif", ".tiff") else 255
    write_labels(path, mask.astype(np.uint8) * scale)


OVERLAY_COLOURS = ((0.0, 0.9, 1.0), (1.0, 0.92, 0.0), (1.0, 0.25, 1.0), (1.0, 0.1, 0.1))  # cyan, yellow, magenta, red


def overlay_colour(rgb: np.ndarray, mask: np.ndarray) -> tuple:
    """The tint farthest from the masked pixels' mean colour: a red object is not tinted red."""
    if not mask.any():
        return OVERLAY_COLOURS[0]
    mean = rgb[mask].mean(axis=0)
    return max(OVERLAY_COLOURS, key=lambda colour: float(np.linalg.norm(np.subtract(colour, mean))))


def overlay(image: np.ndarray, mask: np.ndarray, colour=None, alpha: float = 0.5) -> np.ndarray:
    """The picture with the mask tinted (in a colour that shows on the object), as uint8 RGB, for a quick look."""
    from .core.image import to_rgb_float

    rgb = to_rgb_float(image)
    colour = overlay_colour(rgb, mask) if colour is None else colour
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
    parser.add_argument("--dtype", default="auto", help="auto (float16 on cuda; bfloat16 for real-size models on a "
                        "CPU with native bfloat16; float32 elsewhere), float32, float16, bfloat16, bf16-autocast "
                        "(float32 weights computing in bfloat16)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="NAME=VALUE",
                        help="change a setting (repeatable; see the list below)")
    parser.add_argument("--allow-pickle-weights", action="store_true",
                        help="also load pickle-based .bin weights (they can run code when loaded: only for a "
                             "model you trust); by default only safetensors weights are read")


def add_picture_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plane", metavar="I[,J...]", help="which plane of a stack, an animation or a multipage "
                        "file (one index per plane axis, from 0); needed when the file holds several")
    parser.add_argument("--channels", metavar="C[,C,C]", help="which channels make the picture: one (grey) or three "
                        "(RGB), from 0; needed for files with channels other than grey, RGB or RGBA")


def picture_options(args: argparse.Namespace) -> dict:
    """``read_image``'s plane and channels from --plane and --channels (checked before the model loads)."""
    return {"plane": parse_indices(args.plane, "--plane"), "channels": parse_indices(args.channels, "--channels")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-editseg",
        description="Segment the object a sentence names, from one forward of an image-editing model's denoiser.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (add_segment_command, add_batch_command, add_replay_command, add_eval_command):
        add(commands)
    from .instances_cli import add_objects_command

    add_objects_command(commands, command, add_picture_arguments, add_model_arguments)
    return parser


def command(commands, name: str, help: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
    """A command whose help ends with every setting (the ones that take ``--set``)."""
    return commands.add_parser(name, help=help, description=description, epilog=settings_help() + epilog,
                               formatter_class=argparse.RawDescriptionHelpFormatter)


def add_segment_command(commands) -> None:
    segment = command(
        commands,
        "segment", "segment one image",
        "Segment what each expression names in IMAGE and write one mask per expression.",
        "\n\nsamples (--sample NAME): " + ", ".join(SAMPLES) +
        "\n\nexample:\n  napari-editseg segment --sample astronaut \"the woman's face\" -o face.png",
    )
    segment.add_argument("inputs", nargs="*", metavar="IMAGE EXPRESSION",
                         help="image file, then expression (without --sample); or only the expression")
    segment.add_argument("-e", "--expression", action="append", default=[],
                         help="an expression (repeatable: one mask each, the image encoded once)")
    segment.add_argument("--sample", help="use one of scikit-image's sample pictures instead of a file")
    segment.add_argument("-o", "--output", default="mask.png",
                         help="mask file: .png (0/255), .tif (0/1) or .npy (bool); default mask.png")
    segment.add_argument("--overlay", help="also write the picture with the mask tinted (.png, .tif or .jpg)")
    segment.add_argument("--scores", help="also write the score map S (float32 .npy, image size)")
    segment.add_argument("--prior", help="also write the attention prior P (float32 .npy, image size)")
    segment.add_argument("--tile", action="store_true",
                         help="large images: read IMAGE region by region (a TIFF, or an OME-Zarr / zarr folder) and "
                              "segment coarse to fine, the tiles that matter at full resolution; -o may be a .zarr "
                              "folder, written tile by tile (see docs/usage.md, 'Large images')")
    add_picture_arguments(segment)
    add_model_arguments(segment)
    segment.set_defaults(run=run_segment)


def add_batch_command(commands) -> None:
    batch = command(
        commands,
        "batch", "label a folder of images (or a CSV of image,expression rows)",
        "Write one label image per input image (same size). Resumable: outputs that exist are skipped. "
        "Runs unchanged under `accelerate launch` (each process takes a shard).",
    )
    batch.add_argument("input", nargs="?", help="folder of images")
    batch.add_argument("expression", nargs="?", help="what to segment in every image")
    batch.add_argument("--csv", help="CSV with columns image,expression (several rows per image: labels 1, 2, ...)")
    batch.add_argument("--out", required=True, help="output folder")
    batch.add_argument("--format", choices=("tif", "png"), default="tif",
                       help="label image format (default tif): labels 1, 2, … per expression; a PNG of one "
                            "expression is 0/255 like segment's masks")
    batch.add_argument("--overwrite", action="store_true", help="redo images whose output exists")
    batch.add_argument("--batch-size", type=int, default=1, help="images per batched VAE encode and denoiser forward "
                       "(same labels; images are read in the background meanwhile). Default 1")
    add_picture_arguments(batch)
    add_model_arguments(batch)
    batch.set_defaults(run=run_batch)


def add_replay_command(commands) -> None:
    replay = commands.add_parser(
        "replay", help="make labels again from their records (widget export)",
        description="Make the labels of a record file (the JSON the widget exports beside its TIFF) again, "
                    "bit for bit on the same device and versions, and optionally compare them with a label image.",
        epilog="example:\n  napari-editseg replay cells.editseg.json --image cells.tif --check cells-labels.tif",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    replay.add_argument("records", help="record file (*.editseg.json)")
    replay.add_argument("--image", required=True, help="the image the labels were made on (same data)")
    replay.add_argument("-o", "--output", help="write the replayed labels here (.tif, or .png for labels up to 65535); "
                        "never one of the inputs")
    replay.add_argument("--check", help="label image to compare with, label by label; exit 1 if any differs")
    replay.add_argument("--model", help="load this model instead of the recorded id/folder (it must hash the same); "
                        "a hub id given here may be downloaded, the recorded one never is")
    replay.add_argument("--device", help="run on this device instead of the recorded one (results may differ)")
    replay.set_defaults(run=run_replay)


def add_eval_command(commands) -> None:
    evaluate = command(
        commands,
        "eval", "RefCOCO / RefCOCO+ / RefCOCOg evaluation, exact zero-shot protocol",
        "Score a method on a referring-segmentation split (docs/evaluation.md). Resumable with the same "
        "--out; runs unchanged under `accelerate launch`.",
    )
    evaluate.add_argument("--data-root", required=True, help="refer-layout root, or a folder of parquet files")
    evaluate.add_argument("--dataset", required=True, choices=("refcoco", "refcoco+", "refcocog"))
    evaluate.add_argument("--split", required=True, help="val, test, testA, testB, ...")
    evaluate.add_argument("--split-by", choices=("unc", "umd", "google"),
                          help="default: unc (refcoco, refcoco+), umd (refcocog)")
    evaluate.add_argument("--layout", choices=("auto", "refer", "parquet"), default="auto")
    evaluate.add_argument("--limit", type=int, help="only the first N samples")
    evaluate.add_argument("--method", choices=("editseg", "whole-image", "centre", "prior-only"), default="editseg")
    evaluate.add_argument("--out", default="report.json", help="report JSON (per-sample records beside it)")
    evaluate.add_argument("--strict", action="store_true", help="Prec@X counts IoU > X (TAS, Ref-Diff) not >= X")
    evaluate.add_argument("--binarise", choices=("eq1", "gt0"), default="eq1",
                          help="ground truth from summed polygons: == 1 (reference code) or > 0")
    evaluate.add_argument("--sentence", choices=("sent", "raw"), default="sent", help="refer field used as text")
    evaluate.add_argument("--batch-size", type=int, default=1, help="images per batched VAE encode and denoiser "
                          "forward (same results; images are read in the background meanwhile). Default 1")
    add_model_arguments(evaluate)
    evaluate.set_defaults(run=run_eval)


def segment_outputs(args: argparse.Namespace, count: int) -> list[tuple[str, Path]]:
    """(option, path) of every file ``segment`` will write, in the order it writes them."""
    if args.tile and (args.overlay or args.scores or args.prior):
        raise ValueError("--overlay, --scores and --prior hold the whole image in memory: leave them out with --tile")
    masks = MASK_SUFFIXES + (ZARR_SUFFIXES if args.tile else ())
    options = (("-o", args.output, masks, " (a mask must be lossless)" + ("" if args.tile else "; .zarr with --tile")),
               ("--overlay", args.overlay, OVERLAY_SUFFIXES, ""), ("--scores", args.scores, MAP_SUFFIXES, ""),
               ("--prior", args.prior, MAP_SUFFIXES, ""))
    outputs = []
    for option, path, allowed, why in options:
        if path:
            check_suffix(option, Path(path), allowed, why)
            outputs += [(option, numbered(path, i, count)) for i in range(count)]
    return outputs


def run_segment(args: argparse.Namespace) -> int:
    inputs = list(args.inputs)
    if args.sample:
        if inputs and Path(inputs[0]).is_file():
            raise ValueError(f"give either an IMAGE file or --sample, not both ({inputs[0]!r} is a file)")
        source, input_files = f"sample {args.sample!r}", []
        check_sample(args.sample)
    else:
        if not inputs:
            raise ValueError("give an IMAGE file (or --sample NAME) and an expression")
        source = inputs.pop(0)
        input_files = [Path(source)]
    expressions = inputs + list(args.expression)
    if not expressions:
        raise ValueError("give at least one expression, e.g. \"the dog on the left\"")
    for expression in expressions:
        normalise_expression(expression)  # empty or not UTF-8: refused before anything loads
    overrides = parse_settings(args.settings)
    SegmentationSettings().replace(**overrides)  # bad settings fail before the model loads
    outputs = segment_outputs(args, len(expressions))
    check_outputs(outputs, input_files)
    picture = picture_options(args)
    if args.sample and (picture["plane"] or picture["channels"]):
        raise ValueError("--plane and --channels choose from an IMAGE file; a sample is one RGB picture")
    if args.tile:
        levels = [sample_image(args.sample)] if args.sample else open_input(Path(source), picture)
    elif not args.sample and Path(source).is_dir():
        raise ValueError(f"{source!r} is a folder: a zarr or OME-Zarr image is read region by region with --tile")
    else:
        image = sample_image(args.sample) if args.sample else read_image(source, **picture)

    from .core.segmenter import EditSegmenter

    start = time.perf_counter()
    segmenter = EditSegmenter.from_pretrained(args.model, device=args.device, dtype=args.dtype,
                                              allow_pickle=args.allow_pickle_weights, **overrides)
    loaded = time.perf_counter()
    if args.tile:
        segment_tiles(args, segmenter, levels, expressions, source)
    else:
        segment_whole(args, segmenter, image, expressions, source)
    print(printable(f"model {args.model} on {segmenter.device} loaded in {loaded - start:.1f} s; "
                    f"{len(expressions)} expression(s) in {time.perf_counter() - loaded:.1f} s"))
    if args.model == DEMO_MODEL:
        print(f"{DEMO_MODEL} is a 5 MB toy that knows only the shapes world. For photographs, leave out --model: "
              f"the first run downloads {DEFAULT_MODEL} (about 4 GB) into the Hugging Face cache (or "
              f"`hf download {DEFAULT_MODEL}` on a machine with internet and copy the cache).")
    return 0


def segment_whole(args: argparse.Namespace, segmenter, image: np.ndarray, expressions: list, source: str) -> None:
    """``segment``: the image set once, each expression's mask (and overlay, scores, prior) written."""
    segmenter.set_image(image)
    for index, expression in enumerate(expressions):
        result = segmenter.segment(expression)
        mask_path = numbered(args.output, index, len(expressions))
        write_mask(mask_path, result.mask)
        if args.overlay:
            write_labels(numbered(args.overlay, index, len(expressions)), overlay(image, result.mask))
        for path, values in ((args.scores, result.scores), (args.prior, result.prior)):
            if path:
                write_npy(numbered(path, index, len(expressions)), values)
        note = " (instruction truncated to fit the text encoder)" if result.truncated else ""
        found = "" if result.found else f" - nothing found (below min_confidence {result.settings.min_confidence:g})"
        print(printable(f"{mask_path}: {result.area:.1%} of {source} for {expression!r}, "
                        f"confidence {result.confidence:.2f}{found}{note}"))


def open_input(path: Path, picture: dict) -> list:
    """A TIFF or zarr folder as lazy views (finest level first); other files read whole."""
    from .large import open_levels

    if path.is_dir() or path.suffix.lower() in (".tif", ".tiff"):
        return open_levels(path, picture["plane"], picture["channels"])
    return [read_image(path, **picture)]


def segment_tiles(args: argparse.Namespace, segmenter, levels: list, expressions: list, source: str) -> None:
    """``segment --tile``: each expression coarse to fine; masks written whole, or to zarr tile by tile."""
    from .core.tiling import segment_tiled, tile_geometry
    from .large import zarr_mask

    settings = segmenter.resolve_settings()
    side = tile_geometry(settings)[0]
    scale = "at full resolution" if side == settings.resolution else f"of {side} px"
    for index, expression in enumerate(expressions):
        result = segment_tiled(segmenter, levels, expression)
        path = numbered(args.output, index, len(expressions))
        if path.suffix.lower() in ZARR_SUFFIXES:
            result.write(zarr_mask(path, result.shape))
        else:
            write_mask(path, result.full_mask())
        area = result.mask.sum() / (result.shape[0] * result.shape[1])
        print(printable(f"{path}: {area:.2%} of {source} for {expression!r}, confidence {result.confidence:.2f}; "
                        f"{len(result.tiles)} tile(s) {scale}, {result.timings['total']:.1f} s"))


def run_batch(args: argparse.Namespace) -> int:
    from .batch import jobs_from_csv, jobs_from_folder, summary
    from .batch import run_batch as label_all

    if args.csv:
        jobs = jobs_from_csv(Path(args.csv), Path(args.out), args.format)
    elif args.input and args.expression and args.expression.strip():
        jobs = jobs_from_folder(Path(args.input), args.expression, Path(args.out), args.format)
    else:
        raise ValueError("give INPUT_DIR and a non-empty EXPRESSION, or --csv FILE")
    overrides = parse_settings(args.settings)
    SegmentationSettings().replace(**overrides)
    picture = picture_options(args)

    def factory():
        from ._distributed import process_state, segmenter_device
        from .core.segmenter import EditSegmenter

        device = segmenter_device(process_state(), args.device)
        return EditSegmenter.from_pretrained(args.model, device=device, dtype=args.dtype,
                                             allow_pickle=args.allow_pickle_weights, **overrides)

    report = label_all(jobs, factory, Path(args.out), overwrite=args.overwrite, batch_size=args.batch_size,
                       read=lambda path: read_image(path, **picture), table=Path(args.csv) if args.csv else None)
    print(summary(report))
    return 0


def replay_outputs(args: argparse.Namespace, records: list[dict]) -> None:
    """Refuse, before any model loads, an output that is one of the inputs or that cannot hold the labels."""
    inputs = [("record", args.records), ("--image", args.image)] + ([("--check", args.check)] if args.check else [])
    if not args.output:
        return
    output = Path(args.output)
    check_suffix("-o", output, LABEL_SUFFIXES)
    check_outputs([("-o", output)], inputs)
    highest = max(record["label"] for record in records)
    if output.suffix.lower() == ".png" and highest > np.iinfo(np.uint16).max:
        raise ValueError(f"-o {args.output!r}: a PNG holds labels up to 65535, the records go to {highest}: "
                         "write a .tif")


def run_replay(args: argparse.Namespace) -> int:
    from .record import read_records
    from .replay import check_image, load_recorded_model, replay_labels

    content = read_records(args.records)
    records = content["records"]
    replay_outputs(args, records)
    image = read_array(args.image)
    expected = read_array(args.check) if args.check else None
    shape = check_image(records, image, content.get("shape"))
    if expected is not None and expected.shape != shape:
        raise ValueError(f"{args.check!r} has shape {expected.shape}, the replayed labels {shape}")
    models: dict = {}

    def segmenter_for(record):
        key = (args.model or record["model"]["id"], args.device or record["device"], record["dtype"])
        if key not in models:
            models[key] = load_recorded_model(record, args.model, args.device)
        return models[key]

    labels = replay_labels(records, image, segmenter_for, content.get("shape"))
    if args.output:
        write_labels(Path(args.output), labels)
        print(printable(f"{args.output}: {len(records)} label(s) replayed"))
    if expected is None:
        return 0
    differing = 0
    for record in records:
        label = record["label"]
        pixels = int(((expected == label) != (labels == label)).sum())
        differing += bool(pixels)
        print(printable(f"label {label} ({record['expression'] or 'no words'}): "
                        f"{'identical' if not pixels else f'{pixels} pixels differ'}"))
    return 1 if differing else 0


def run_eval(args: argparse.Namespace) -> int:
    from ._distributed import process_state
    from .eval.run import EvalConfig, evaluate, report_table

    overrides = parse_settings(args.settings)
    SegmentationSettings().replace(**overrides)
    config = EvalConfig(
        data_root=args.data_root, dataset=args.dataset, split=args.split, split_by=args.split_by,
        layout=args.layout, limit=args.limit, method=args.method, model=args.model, device=args.device,
        dtype=args.dtype, settings=overrides, out=args.out, strict=args.strict, binarise=args.binarise,
        sentence_field=args.sentence, allow_pickle=args.allow_pickle_weights, batch_size=args.batch_size,
    )
    report = evaluate(config)
    if process_state().is_main_process:
        print(report_table(report))
        print(f"report: {args.out}")
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
    from .core.budget import memory_error_from
    from .core.model import ModelNotAvailableError

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warning
            return args.run(args)
    except ModelNotAvailableError as error:
        say_error(error)
        return 3
    except (ValueError, OSError) as error:
        say_error(error)
        return 2
    except (MemoryError, RuntimeError) as error:  # torch's out-of-memory errors are RuntimeErrors
        memory = memory_error_from(error)
        if memory is None:
            raise
        say_error(memory)
        return 2
    except KeyboardInterrupt:
        print("napari-editseg: interrupted (files are written whole or not at all)", file=sys.stderr)
        return 130


def say_error(error: BaseException) -> None:
    """An error as one line on stderr; text from files and records shown escaped (:func:`printable`)."""
    print(f"napari-editseg: error: {printable(' '.join(str(error).split()))}", file=sys.stderr)


def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line on stderr, like the errors (no source line, no file name)."""
    print(f"napari-editseg: warning: {printable(' '.join(str(message).split()))}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
