"""Batch labelling through the real CLI on the tiny model: exact labels, resume, collisions, foreign files."""

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage import io

from napari_editseg.cli import main
from napari_editseg.files import read_description

SIZES = [(45, 60), (30, 30), (50, 20)]


@pytest.fixture()
def inputs(tmp_path, picture):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, size in enumerate(SIZES):
        io.imsave(folder / f"img{i}.png", picture[:size[0], :size[1]] if i < 2 else np.zeros(size + (3,), np.uint8),
                  check_contrast=False)
    return folder


def batch_args(source, out, model, *more):
    return ["batch", *source, "--out", str(out), "--model", str(model), "--device", "cpu", *more]


def test_a_folder_is_labelled_exactly_as_the_api_segments_and_a_rerun_resumes(inputs, tmp_path, tiny_model_dir,
                                                                              segmenter, capsys):
    (inputs / "broken.png").write_bytes(b"\x89PNG but not really")
    out = tmp_path / "out"
    args = batch_args([str(inputs), "the red disc"], out, tiny_model_dir)
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "labelled 3 image(s)" in text and "1 unreadable" in text and "broken.png" in text
    for i in range(3):
        segmenter.set_image(io.imread(inputs / f"img{i}.png"))
        expected = segmenter.segment("the red disc").mask.astype(np.uint8)
        labels = io.imread(out / f"img{i}.tif")
        assert labels.dtype == np.uint8 and np.array_equal(labels, expected)
        assert read_description(out / f"img{i}.tif")["labels"] == {"1": "the red disc"}
    assert main(args) == 0
    assert "labelled 0 image(s); 3 already done" in capsys.readouterr().out
    report = json.loads((out / "batch_report.json").read_text())
    assert [item["labels"] for item in report["images"]] == [{"1": "the red disc"}] * 3  # resumed ones too
    assert [item["image"].split("/")[-1] for item in report["unreadable"]] == ["broken.png"]


def test_a_csv_gives_one_label_per_expression_earlier_ones_first(tmp_path, tiny_model_dir, picture, segmenter):
    io.imsave(tmp_path / "a.png", picture, check_contrast=False)
    (tmp_path / "jobs.csv").write_text("image,expression\na.png,the red disc\na.png,the blue square\n")
    assert main(batch_args(["--csv", str(tmp_path / "jobs.csv")], tmp_path / "out", tiny_model_dir,
                           "--format", "png", "--set", "mask_threshold=0.2")) == 0
    segmenter.set_image(picture)
    first, second = (r.mask for r in segmenter.segment_batch(["the red disc", "the blue square"], mask_threshold=0.2))
    expected = np.where(first, 1, np.where(second, 2, 0)).astype(np.uint8)
    assert np.array_equal(io.imread(tmp_path / "out" / "a.png"), expected)
    assert {1, 2} <= set(np.unique(expected))  # both labels really are written
    report = json.loads((tmp_path / "out" / "batch_report.json").read_text())
    assert report["images"][0]["labels"] == {"1": "the red disc", "2": "the blue square"}


def test_a_png_of_one_expression_is_0_and_255_as_segment_writes_and_its_description_says_so(
        tmp_path, tiny_model_dir, picture, segmenter):
    """A one-expression PNG holds 255 (a mask, as ``segment -o x.png``); a TIFF or several expressions 1, 2, …"""
    (tmp_path / "in").mkdir()
    io.imsave(tmp_path / "in" / "a.png", picture, check_contrast=False)
    assert main(batch_args([str(tmp_path / "in"), "the red disc"], tmp_path / "out", tiny_model_dir,
                           "--format", "png")) == 0
    segmenter.set_image(picture)
    mask = segmenter.segment("the red disc").mask
    assert mask.any() and not mask.all()  # both values must show for the check to mean anything
    assert np.array_equal(io.imread(tmp_path / "out" / "a.png"), np.where(mask, 255, 0).astype(np.uint8))
    assert read_description(tmp_path / "out" / "a.png")["labels"] == {"255": "the red disc"}


def test_new_csv_rows_for_a_labelled_image_are_reported_and_overwrite_relabels(tmp_path, tiny_model_dir, picture,
                                                                               capsys):
    io.imsave(tmp_path / "a.png", picture, check_contrast=False)
    table = tmp_path / "jobs.csv"
    table.write_text("image,expression\na.png,the red disc\n")
    args = batch_args(["--csv", str(table)], tmp_path / "out", tiny_model_dir)
    assert main(args) == 0
    before = (tmp_path / "out" / "a.tif").read_bytes()
    table.write_text("image,expression\na.png,the red disc\na.png,the blue square\n")
    capsys.readouterr()
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "1 existing output(s) not replaced" in text and "other expressions" in text
    assert (tmp_path / "out" / "a.tif").read_bytes() == before
    assert main(args + ["--overwrite"]) == 0
    assert read_description(tmp_path / "out" / "a.tif")["labels"] == {"1": "the red disc", "2": "the blue square"}


def test_inputs_that_share_a_name_are_refused_before_the_model_loads(inputs, tmp_path, capsys):
    io.imsave(inputs / "img0.tif", np.zeros((8, 8), np.uint8), check_contrast=False)
    code = main(batch_args([str(inputs), "x"], tmp_path / "out", tmp_path / "no-model"))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "img0.png, img0.tif -> img0.tif" in err and "no-model" not in err


def test_labels_never_overwrite_an_input(inputs, tmp_path, capsys):
    io.imsave(inputs / "img0.tif", np.zeros((8, 8), np.uint8), check_contrast=False)
    (inputs / "img0.png").unlink()
    before = (inputs / "img0.tif").read_bytes()
    code = main(batch_args([str(inputs), "x"], inputs, tmp_path / "no-model"))
    assert code == 2 and "is an input file" in capsys.readouterr().err
    assert (inputs / "img0.tif").read_bytes() == before


def test_no_readable_image_still_gives_a_report(tmp_path, tiny_model_dir, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"nope")
    assert main(batch_args([str(folder), "x"], tmp_path / "out", tiny_model_dir)) == 0
    report = json.loads((tmp_path / "out" / "batch_report.json").read_text())
    assert report["images"] == [] and len(report["unreadable"]) == 1


def test_foreign_files_are_kept_and_a_dangling_link_is_replaced_not_written_through(inputs, tmp_path,
                                                                                    tiny_model_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "img0.tif").write_bytes(b"someone else's file")
    (out / "img1.tif").symlink_to(tmp_path / "elsewhere.tif")  # dangling
    assert main(batch_args([str(inputs), "the red disc"], out, tiny_model_dir)) == 0
    assert "not written by napari-editseg" in capsys.readouterr().out
    assert (out / "img0.tif").read_bytes() == b"someone else's file"
    assert not (out / "img1.tif").is_symlink() and io.imread(out / "img1.tif").shape == SIZES[1]
    assert not (tmp_path / "elsewhere.tif").exists()


@pytest.mark.parametrize("content, message", [
    ("image,expression\na.png,the disc\na.png,   \n", "line 3: an image and a non-empty expression"),
    ("picture,what\na.png,x\n", "needs the columns image,expression"),
    (b"image,expression\na.png,caf\xe9\n", "is not UTF-8 text"),
])
def test_a_bad_csv_is_one_line_before_the_model_loads(tmp_path, content, message, capsys):
    table = tmp_path / "jobs.csv"
    table.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(batch_args(["--csv", str(table)], tmp_path / "out", tmp_path / "no-model")) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_batched_labelling_writes_the_batched_masks_in_one_forward_per_size(tmp_path, picture, segmenter,
                                                                            count_calls):
    from napari_editseg.batch import jobs_from_folder, run_batch

    folder = tmp_path / "in"
    folder.mkdir()
    images = [np.roll(picture, 7 * i, axis=1) for i in range(3)]  # one size: one batch
    for i, image in enumerate(images):
        io.imsave(folder / f"img{i}.png", image, check_contrast=False)
    (folder / "broken.png").write_bytes(b"not a picture")
    out = tmp_path / "out"
    jobs = jobs_from_folder(folder, "the red disc", out, "tif")
    with count_calls(segmenter.model.unet) as forwards:
        report = run_batch(jobs, lambda: segmenter, out, progress=False, batch_size=4)
    # one size: one forward of the instructions and one of the relevance baselines, for all three images
    assert forwards.calls == 2 and len(report["images"]) == 3 and len(report["unreadable"]) == 1
    expected = segmenter.segment_images(images, [["the red disc"]] * 3)
    for i, (result,) in enumerate(expected):
        assert np.array_equal(io.imread(out / f"img{i}.tif"), result.mask.astype(np.uint8))
    assert main(batch_args([str(folder), "the red disc"], tmp_path / "cli", "unused", "--batch-size", "0")) == 2


def test_an_image_the_model_refuses_fails_alone_in_a_batch(tmp_path, picture, segmenter):
    from napari_editseg.batch import jobs_from_folder, run_batch

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        io.imsave(folder / f"img{i}.png", np.roll(picture, 7 * i, axis=1), check_contrast=False)
    with_nan = np.ones(picture.shape[:2], np.float32)
    with_nan[3, 4] = np.nan
    tifffile.imwrite(folder / "nan.tif", with_nan)  # read, then refused by the segmenter
    out = tmp_path / "out"
    report = run_batch(jobs_from_folder(folder, "the red disc", out, "tif"), lambda: segmenter, out,
                       progress=False, batch_size=3)
    assert [item["image"].split("/")[-1] for item in report["failed"]] == ["nan.tif"]
    assert "NaN" in report["failed"][0]["error"]
    assert len(report["images"]) == 2
    for i in range(2):
        segmenter.set_image(np.roll(picture, 7 * i, axis=1))
        expected = segmenter.segment("the red disc").mask.astype(np.uint8)
        assert np.array_equal(io.imread(out / f"img{i}.tif"), expected)


# -- issue 26: one bad image never aborts a batch; labels never wrap; only our own outputs count as done ------
def test_labels_never_wrap_whatever_the_number_of_expressions():
    from napari_editseg.batch import stack_labels

    for count, dtype in ((255, np.uint8), (256, np.uint16), (65535, np.uint16), (65536, np.uint32)):
        masks = [np.zeros((1, 2), bool) for _ in range(count)]
        masks[-1][0, 0] = True  # only the last expression finds something
        masks[0][0, 1] = True
        labels = stack_labels(masks)
        assert labels.dtype == dtype and labels.tolist() == [[count, 1]], count


def test_an_output_made_by_something_else_is_kept_even_when_it_names_the_same_expressions(inputs, tmp_path,
                                                                                          tiny_model_dir, capsys):
    from napari_editseg.files import write_labels

    out = tmp_path / "out"
    write_labels(out / "img0.tif", np.full(SIZES[0], 7, np.uint8),
                 {"made_by": "napari-editseg widget", "image": "img0.png", "labels": {"1": "the red disc"}})
    before = (out / "img0.tif").read_bytes()
    assert main(batch_args([str(inputs), "the red disc"], out, tiny_model_dir)) == 0
    text = capsys.readouterr().out
    assert "labelled 2 image(s); 0 already done" in text and "not written by napari-editseg batch" in text
    assert (out / "img0.tif").read_bytes() == before


def test_one_bad_image_never_aborts_a_batch(tmp_path, picture, segmenter, monkeypatch):
    """Unreadable, a stack without --plane, too large, a reader that fails its own way, a name that
    is long but legal, out of memory, and a label image that cannot be written: each is reported,
    the rest labelled."""
    from napari_editseg import files
    from napari_editseg.batch import jobs_from_folder, run_batch
    from napari_editseg.image_files import read_image

    folder = tmp_path / "in"
    folder.mkdir()
    good = ["a.png", "b.png", "x" * 251 + ".png", "unwritable.png"]
    for i, name in enumerate(good):
        io.imsave(folder / name, np.roll(picture, 5 * i, axis=1), check_contrast=False)
    (folder / "broken.png").write_bytes(b"not a picture")
    tifffile.imwrite(folder / "stack.tif", np.zeros((3, 20, 20), np.uint8))
    tifffile.imwrite(folder / "huge.tif", shape=(20000, 20000, 3), dtype=np.uint8)
    io.imsave(folder / "odd.png", picture, check_contrast=False)
    io.imsave(folder / "oom.png", picture[:40, :41], check_contrast=False)
    real_write = files.write_labels

    class OutOfMemoryOnOneImage:
        """The segmenter, but torch's CPU allocator fails on the 40×41 picture."""

        def __getattr__(self, name):
            return getattr(segmenter, name)

        def set_image(self, image):
            if image.shape[:2] == (40, 41):
                raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 21474836480 "
                                   "bytes. Error code 12 (Cannot allocate memory)")
            segmenter.set_image(image)

    def read(path):
        if path.name == "odd.png":
            raise RuntimeError("a decoder that fails its own way")
        return read_image(path)

    def write(path, labels, description=None):
        if path.name == "unwritable.tif":
            raise OSError(28, "No space left on device")
        real_write(path, labels, description)

    monkeypatch.setattr(files, "write_labels", write)
    out = tmp_path / "out"
    report = run_batch(jobs_from_folder(folder, "the red disc", out, "tif"), OutOfMemoryOnOneImage, out,
                       progress=False, read=read)
    names = {key: sorted(Path(item["image"]).name for item in report[key]) for key in ("images", "unreadable",
                                                                                     "failed")}
    assert names == {"images": sorted(good[:3]), "unreadable": ["broken.png", "huge.tif", "odd.png", "stack.tif"],
                     "failed": ["oom.png", "unwritable.png"]}
    errors = {Path(item["image"]).name: item["error"] for item in report["unreadable"] + report["failed"]}
    assert "holds 3 planes" in errors["stack.tif"] and "RuntimeError: a decoder" in errors["odd.png"]
    assert "No space left" in errors["unwritable.png"] and "more than the 268 M" in errors["huge.tif"]
    assert errors["oom.png"].startswith("out of memory: this needs one more allocation of 20.0 GiB")
    for name in good[:3]:
        segmenter.set_image(np.roll(picture, 5 * good.index(name), axis=1))
        expected = segmenter.segment("the red disc").mask.astype(np.uint8)
        assert np.array_equal(io.imread(out / (Path(name).stem + ".tif")), expected)


def test_a_folder_of_stacks_is_labelled_on_the_plane_asked_for(tmp_path, picture, tiny_model_dir, segmenter):
    folder = tmp_path / "in"
    folder.mkdir()
    stacks = [np.stack([np.roll(picture[..., c], 4 * i, axis=1) for c in range(3)]) for i in range(2)]
    for i, stack in enumerate(stacks):
        tifffile.imwrite(folder / f"s{i}.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    assert main(batch_args([str(folder), "the red disc"], tmp_path / "out", tiny_model_dir, "--plane", "1")) == 0
    for i, stack in enumerate(stacks):
        segmenter.set_image(stack[1])
        assert np.array_equal(io.imread(tmp_path / "out" / f"s{i}.tif"),
                              segmenter.segment("the red disc").mask.astype(np.uint8))


def test_the_report_never_replaces_an_input(tmp_path, picture, capsys):
    out = tmp_path / "out"
    out.mkdir()
    io.imsave(tmp_path / "a.png", picture, check_contrast=False)
    table = out / "batch_report.json"  # a CSV under the report's name, in the output folder
    table.write_text("image,expression\n../a.png,the disc\n")
    assert main(batch_args(["--csv", str(table)], out, tmp_path / "no-model")) == 2
    assert "is the --csv file" in capsys.readouterr().err
    assert table.read_text().startswith("image,expression")
