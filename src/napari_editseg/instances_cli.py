"""``napari-editseg objects``: one label per object, counted, from words, from exemplar labels, or everything.

Writes an instance label image (0 = background, ids 1…n by decreasing score) and a CSV with one row
per object: id, area (pixels), centroid (row, col in pixels) and score.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from .core.settings import SegmentationSettings
from .files import atomic_path, check_outputs, check_suffix, printable, write_labels, write_npy
from .image_files import read_array, read_image
from .samples import check_sample, sample_image

LABEL_SUFFIXES = (".tif", ".tiff", ".png", ".npy")


def add_objects_command(commands, command, add_picture_arguments, add_model_arguments) -> None:
    objects = command(
        commands, "objects", "one label per object: every object the words name, more like some labels, or all",
        "Write an instance label image of IMAGE (ids 1…n by decreasing score) and a CSV: id, area, centroid, score.\n"
        "From EXPRESSION (every object it names), from exemplar labels (--like LABELS --ids 3,7: the other objects "
        "like them; painted labels are never overwritten), or --everything (no words: regions of the image).",
        "\n\nexamples:\n  napari-editseg objects cells.tif \"nuclei\" -o nuclei.tif\n"
        "  napari-editseg objects cells.tif --like painted.tif --ids 3,7 -o more.tif\n"
        "  napari-editseg objects photo.png --everything --set granularity=16 -o regions.tif",
    )
    objects.add_argument("image", nargs="?", help="image file (without --sample)")
    objects.add_argument("expression", nargs="?", help="what to find every object of (optional with --like)")
    objects.add_argument("--sample", help="use one of the bundled sample pictures instead of a file")
    objects.add_argument("--like", metavar="LABELS", help="label image of IMAGE holding the exemplars")
    objects.add_argument("--ids", metavar="ID[,ID...]", help="with --like: the exemplars' label ids")
    objects.add_argument("--everything", action="store_true", help="no words: every region of the image")
    objects.add_argument("-o", "--output", default="objects.tif",
                         help="instance label image: .tif, .png (up to 65535 objects) or .npy; default objects.tif")
    objects.add_argument("--csv", help="the objects' table (default: the label image's name with .csv)")
    add_picture_arguments(objects)
    add_model_arguments(objects)
    objects.set_defaults(run=run_objects)


def mode_of(args: argparse.Namespace) -> str:
    """words, like or everything, refusing contradictions before anything loads."""
    if args.everything and (args.expression or args.like):
        raise ValueError("--everything takes no expression and no --like: it finds every region by itself")
    if bool(args.like) != bool(args.ids):
        raise ValueError("--like LABELS and --ids ID[,ID...] go together: the label image and the exemplars in it")
    if args.everything:
        return "everything"
    if args.like:
        return "like"
    if not args.expression:
        raise ValueError("give an expression, exemplars (--like LABELS --ids 3,7) or --everything")
    return "words"


def write_table(path: Path, instances) -> None:
    """id, area, centroid_row, centroid_col, score: one row per object."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "area", "centroid_row", "centroid_col", "score"])
        for i in instances:
            writer.writerow([i.id, i.area, f"{i.centroid[0]:.2f}", f"{i.centroid[1]:.2f}", f"{i.score:.4f}"])


def picture_source(args: argparse.Namespace) -> None:
    """With --sample the one positional word is the expression, as segment reads it; refuse a file and a
    sample together, or neither."""
    if args.sample:
        check_sample(args.sample)
        if args.image and Path(args.image).is_file():
            raise ValueError(f"give either an IMAGE file or --sample, not both ({args.image!r} is a file)")
        if args.image and args.expression is None:
            args.image, args.expression = None, args.image
    elif not args.image:
        raise ValueError("give an IMAGE file (or --sample NAME)")


def run_objects(args: argparse.Namespace) -> int:
    from .cli import parse_settings, picture_options
    from .core.automatic import parse_label_ids

    picture_source(args)
    mode = mode_of(args)
    ids = parse_label_ids(args.ids) if mode == "like" else None
    overrides = parse_settings(args.settings)
    SegmentationSettings().replace(**overrides)  # bad settings fail before the model loads
    output = Path(args.output)
    check_suffix("-o", output, LABEL_SUFFIXES, " (a label image must be lossless)")
    table = Path(args.csv) if args.csv else output.with_suffix(".csv")
    inputs = ([Path(args.image)] if args.image else []) + ([("--like", Path(args.like))] if args.like else [])
    check_outputs([("-o", output), ("--csv", table)], inputs)
    image = sample_image(args.sample) if args.sample else read_image(args.image, **picture_options(args))
    painted = None if not args.like else (np.load(args.like, allow_pickle=False)
                                          if args.like.lower().endswith(".npy") else read_array(args.like))

    from .core.segmenter import EditSegmenter

    start = time.perf_counter()
    segmenter = EditSegmenter.from_pretrained(args.model, device=args.device, dtype=args.dtype,
                                              allow_pickle=args.allow_pickle_weights, **overrides)
    segmenter.set_image(image)
    if mode == "everything":
        result = segmenter.segment_everything()
    elif mode == "like":
        result = segmenter.segment_like(painted, ids, args.expression)
    else:
        result = segmenter.segment(args.expression, instances=True)
    labels = result.labels
    if output.suffix.lower() == ".npy":
        write_npy(output, labels)
    else:
        write_labels(output, labels.astype(np.uint16 if labels.max() <= 65535 else np.uint32))
    write_table(table, result.instances)
    what = {"everything": "regions", "like": f"objects like label(s) {ids}",
            "words": f"objects for {args.expression!r}"}[mode]
    print(printable(f"{output}: {len(result.instances)} {what} in {args.image}; table {table} "
                    f"({time.perf_counter() - start:.1f} s)"))
    return 0
