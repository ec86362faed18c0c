"""Batch labelling through the real CLI on the tiny model: exact labels, resume, collisions, foreign files."""

import json

import numpy as np
import pytest
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
    io.imsave(folder / "grey-alpha.png", picture[..., :2], check_contrast=False)  # 2 channels: refused
    out = tmp_path / "out"
    report = run_batch(jobs_from_folder(folder, "the red disc", out, "tif"), lambda: segmenter, out,
                       progress=False, batch_size=3)
    assert [item["image"].split("/")[-1] for item in report["failed"]] == ["grey-alpha.png"]
    assert len(report["images"]) == 2
    for i in range(2):
        segmenter.set_image(np.roll(picture, 7 * i, axis=1))
        expected = segmenter.segment("the red disc").mask.astype(np.uint8)
        assert np.array_equal(io.imread(out / f"img{i}.tif"), expected)
