"""RefCOCO evaluation: exact protocol on a synthetic dataset written in the real layouts."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from skimage import io

from napari_editseg.cli import main
from napari_editseg.eval.metrics import score_sample, summarise
from napari_editseg.eval.refer import annotation_mask, read_dataset, select_split
from napari_editseg.eval.run import EvalConfig, centre_ellipse, evaluate

IMAGES = {1: (40, 50), 2: (36, 36), 3: (30, 44)}  # id: (height, width)


def rect(x0, y0, x1, y1):
    return [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]


ANNOTATIONS = {
    10: (1, [rect(5, 5, 15, 15), rect(25, 20, 35, 30)]),  # two disjoint polygons
    11: (1, [rect(10, 10, 30, 30), rect(20, 20, 40, 38)]),  # two overlapping polygons
    20: (2, [[4.0, 30.0, 18.0, 4.0, 32.0, 30.0]]),  # a triangle
    31: (3, [rect(8, 6, 30, 24)]),
}
REFS = [  # ref_id, ann_id, split, sentences
    (100, 10, "val", ["the two squares", "both boxes"]),
    (101, 11, "testA", ["the overlapping pair"]),
    (102, 20, "testB", ["the triangle", "the pointy thing"]),
    (103, 31, "val", ["the box on the right"]),
    (104, 31, "train", ["a training sentence"]),
]


def write_refer(root: Path, broken_image: int = None) -> Path:
    folder = root / "images" / "mscoco" / "images" / "train2014"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = []
    for image_id, (h, w) in IMAGES.items():
        name = f"COCO_train2014_{image_id:012d}.jpg"
        if image_id == broken_image:
            (folder / name).write_bytes(b"this is not a jpeg")
        else:
            io.imsave(folder / name, rng.integers(0, 255, (h, w, 3), dtype=np.uint8), check_contrast=False)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
    annotations = [{"id": ann_id, "image_id": image_id, "category_id": 1, "segmentation": polys, "iscrowd": 0,
                    "area": 1.0, "bbox": [0, 0, 1, 1]} for ann_id, (image_id, polys) in ANNOTATIONS.items()]
    (root / "refcoco").mkdir()
    (root / "refcoco" / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}))
    refs = []
    for ref_id, ann_id, split, sentences in REFS:
        image_id = ANNOTATIONS[ann_id][0]
        sents = [{"tokens": s.split(), "raw": s.upper() + "!", "sent": s, "sent_id": ref_id * 10 + i}
                 for i, s in enumerate(sentences)]
        refs.append({"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "category_id": 1, "split": split,
                     "sent_ids": [s["sent_id"] for s in sents], "sentences": sents,
                     "file_name": f"COCO_train2014_{image_id:012d}_{ref_id}.jpg"})  # not a real file, as in refer
    with (root / "refcoco" / "refs(unc).p").open("wb") as handle:
        pickle.dump(refs, handle)
    return root


@pytest.fixture()
def refer_root(tmp_path):
    return write_refer(tmp_path / "refer")


def write_parquet(refer: Path, folder: Path) -> Path:
    """The same data in the jxu124/refcoco-benchmark layout: one row per image, image embedded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    instances = json.loads((refer / "refcoco" / "instances.json").read_text())
    refs = pickle.loads((refer / "refcoco" / "refs(unc).p").read_bytes())
    anns = {a["id"]: a for a in instances["annotations"]}
    folder.mkdir(parents=True)
    for split in ("val", "testA", "testB"):
        rows = []
        for image in instances["images"]:
            chosen = [r for r in select_split(refs, split) if r["image_id"] == image["id"]]
            if not chosen:
                continue
            path = refer / "images" / "mscoco" / "images" / "train2014" / image["file_name"]
            rows.append({
                "image": {"bytes": path.read_bytes(), "path": image["file_name"]},
                "image_info": image,
                "ref_list": [{"ann_info": json.dumps(anns[r["ann_id"]]), "ref_info": json.dumps(r)} for r in chosen],
            })
        pq.write_table(pa.Table.from_pylist(rows), folder / f"refcoco_unc_{split}-00000-of-00001-abcdef.parquet")
    return folder


# -- metrics ---------------------------------------------------------------------------

def test_iou_by_hand():
    truth = np.array([[1, 0, 0], [1, 0, 0]], bool)
    a = score_sample("a", np.array([[1, 1, 0], [0, 0, 0]], bool), truth)
    assert (a.intersection, a.union, a.iou) == (1, 3, pytest.approx(1 / 3))
    b = score_sample("b", truth.copy(), truth)
    report = summarise([a, b])
    assert report["mIoU"] == pytest.approx(100 * (1 / 3 + 1) / 2)
    assert report["oIoU"] == pytest.approx(100 * 3 / 5)
    assert report["precision"] == {"0.5": 50.0, "0.6": 50.0, "0.7": 50.0, "0.8": 50.0, "0.9": 50.0}


def test_empty_failed_and_degenerate_samples_count():
    truth = np.zeros((4, 4), bool)
    truth[:2] = True
    empty = score_sample("e", np.zeros((4, 4), bool), truth)
    failed = score_sample("f", None, truth, "RuntimeError: boom")
    nothing = score_sample("n", np.zeros((2, 2), bool), np.zeros((2, 2), bool))
    assert (empty.iou, empty.union, empty.empty) == (0.0, 8, True)
    assert (failed.union, failed.failed, failed.error) == (8, True, "RuntimeError: boom")
    assert nothing.iou == 0.0  # U = 0 scores 0
    report = summarise([empty, failed, nothing])
    assert (report["n_samples"], report["failures"], report["empty_predictions"]) == (3, 1, 3)
    assert report["sum_union"] == 16 and report["mIoU"] == 0.0


def test_a_prediction_of_another_size_is_an_error_not_a_broadcast():
    with pytest.raises(ValueError, match="never broadcast"):
        score_sample("x", np.ones((1, 4), bool), np.ones((4, 4), bool))


def test_precision_at_exactly_the_threshold_strict_or_not():
    truth = np.array([[1, 1, 0, 0]], bool)
    half = score_sample("h", np.array([[1, 0, 0, 0]], bool), truth)  # IoU exactly 0.5
    assert summarise([half])["precision"]["0.5"] == 100.0
    assert summarise([half], strict=True)["precision"]["0.5"] == 0.0


def test_results_do_not_depend_on_order_or_sharding():
    rng = np.random.default_rng(0)
    scores = [score_sample(str(i), rng.random((9, 9)) > 0.5, rng.random((9, 9)) > 0.4) for i in range(50)]
    whole = summarise(scores)
    shards = summarise(scores[1::2] + scores[0::2])
    assert whole == shards
    with pytest.raises(ValueError, match="duplicate"):
        summarise(scores + scores[:1])


# -- readers ---------------------------------------------------------------------------

def test_split_selection_follows_the_refer_api():
    refs = [{"split": s} for s in ("train", "val", "testA", "testB", "testC", "test")]
    assert [r["split"] for r in select_split(refs, "testA")] == ["testA"]
    assert [r["split"] for r in select_split(refs, "testB")] == ["testB"]
    assert [r["split"] for r in select_split(refs, "test")] == ["testA", "testB", "testC", "test"]
    assert [r["split"] for r in select_split(refs, "val")] == ["val"]
    with pytest.raises(ValueError, match="no such split"):
        select_split(refs, "validation")


def test_refer_layout_samples_images_and_masks(refer_root):
    val = read_dataset(refer_root, "refcoco", "val")
    assert [s.key for s in val] == ["100/1000", "100/1001", "103/1030"]
    assert [s.sentence for s in val] == ["the two squares", "both boxes", "the box on the right"]
    assert read_dataset(refer_root, "refcoco", "val", sentence_field="raw")[0].sentence == "THE TWO SQUARES!"
    assert val[0].load_image().shape == (40, 50, 3)  # the file name came from instances.json
    mask = val[0].load_mask()
    assert mask.shape == (40, 50)
    parts = [annotation_mask([p], 40, 50) for p in ANNOTATIONS[10][1]]
    assert mask.sum() == parts[0].sum() + parts[1].sum() > 0
    assert {s.split for s in read_dataset(refer_root, "refcoco", "testA")} == {"testA"}
    assert len(read_dataset(refer_root, "refcoco", "testB")) == 2


def test_overlapping_polygons_binarise_eq1_or_gt0(refer_root):
    sample = read_dataset(refer_root, "refcoco", "testA")[0]
    first, second = (annotation_mask([p], 40, 50) for p in ANNOTATIONS[11][1])
    assert (first & second).any()
    assert np.array_equal(sample.load_mask(), first ^ second)  # == 1: the overlap drops out
    gt0 = read_dataset(refer_root, "refcoco", "testA", binarise="gt0")[0]
    assert np.array_equal(gt0.load_mask(), first | second)


def test_parquet_layout_gives_the_same_samples(refer_root, tmp_path):
    folder = write_parquet(refer_root, tmp_path / "parquet" / "data")
    for split in ("val", "testA", "testB"):
        a = read_dataset(refer_root, "refcoco", split)
        b = read_dataset(tmp_path / "parquet", "refcoco", split, layout="parquet")
        assert [s.key for s in a] == [s.key for s in b] and [s.sentence for s in a] == [s.sentence for s in b]
        for x, y in zip(a, b):
            assert np.array_equal(x.load_mask(), y.load_mask())
            assert np.array_equal(x.load_image(), y.load_image())
    assert read_dataset(folder.parent, "refcoco", "val")[0].key == "100/1000"  # auto layout
    with pytest.raises(ValueError, match="no refcoco_plus_unc_val"):
        read_dataset(tmp_path / "parquet", "refcoco+", "val")


# -- the harness -----------------------------------------------------------------------

def config(root, out, **kw):
    return EvalConfig(data_root=str(root), dataset="refcoco", split="val", out=str(out), **kw)


def test_whole_image_baseline_by_hand(refer_root, tmp_path):
    report = evaluate(config(refer_root, tmp_path / "r.json", method="whole-image"), progress=False)
    samples = read_dataset(refer_root, "refcoco", "val")
    areas = [s.load_mask().sum() for s in samples]
    sizes = [s.height * s.width for s in samples]
    assert report["mIoU"] == pytest.approx(100 * np.mean(np.array(areas) / np.array(sizes)))
    assert report["oIoU"] == pytest.approx(100 * sum(areas) / sum(sizes))
    assert (report["n_samples"], report["n_refs"], report["n_images"]) == (3, 2, 2)
    assert report["method"] == "whole-image" and report["model"] is None
    assert json.loads((tmp_path / "r.json").read_text())["mIoU"] == report["mIoU"]


def test_centre_ellipse_covers_a_quarter():
    assert centre_ellipse(300, 400).mean() == pytest.approx(0.25, abs=0.01)
    assert centre_ellipse(300, 400)[150, 200] and not centre_ellipse(300, 400)[0, 0]


def test_editseg_and_prior_only_give_exactly_the_metrics_of_their_masks(refer_root, tmp_path, tiny_model_dir,
                                                                         segmenter):
    samples = read_dataset(refer_root, "refcoco", "val")
    for method in ("editseg", "prior-only"):
        report = evaluate(config(refer_root, tmp_path / f"{method}.json", method=method, model=str(tiny_model_dir),
                                 device="cpu"), progress=False)
        assert report["n_samples"] == 3 and report["failures"] == 0
        assert report["settings"]["prior_resolutions"] == [4, 8]  # resolved, not "auto"
        scores = []
        for image_key in ("1", "3"):
            group = [s for s in samples if s.image_key == image_key]
            segmenter.set_image(group[0].load_image())
            results = segmenter.segment_batch([s.sentence for s in group])
            masks = [r.mask if method == "editseg" else r.prior >= r.settings.mask_threshold for r in results]
            scores += [score_sample(s.key, m, s.load_mask()) for s, m in zip(group, masks)]
        expected = summarise(scores)
        for key in ("sum_intersection", "sum_union", "mIoU", "oIoU", "precision", "empty_predictions"):
            assert report[key] == expected[key], (method, key)


def test_a_failing_sample_is_scored_zero_never_skipped(tmp_path):
    root = write_refer(tmp_path / "broken", broken_image=3)
    report = evaluate(config(root, tmp_path / "r.json", method="whole-image"), progress=False)
    assert report["n_samples"] == 3 and report["failures"] == 1
    records = [json.loads(line) for p in tmp_path.glob("r.json.samples*.jsonl") for line in p.read_text().splitlines()]
    failed = [r for r in records if r["failed"]]
    assert failed[0]["intersection"] == 0 and failed[0]["union"] > 0 and "could not read" in failed[0]["error"]


def test_resume_skips_what_is_done_and_refuses_another_run(refer_root, tmp_path, tiny_model_dir, segmenter,
                                                           count_calls):
    out = tmp_path / "r.json"
    cfg = dict(method="editseg", model=str(tiny_model_dir), device="cpu")
    with count_calls(segmenter.model.unet) as first:
        evaluate(config(refer_root, out, limit=2, **cfg), segmenter=segmenter, progress=False)
    assert first.calls == 2  # the two samples of image 1 share one batched forward (and the baseline's)
    with pytest.raises(ValueError, match="another run"):
        evaluate(config(refer_root, out, **cfg), segmenter=segmenter, progress=False)  # limit differs
    out2 = tmp_path / "full.json"
    with count_calls(segmenter.model.unet) as full:
        whole = evaluate(config(refer_root, out2, **cfg), segmenter=segmenter, progress=False)
    with count_calls(segmenter.model.unet) as again:
        resumed = evaluate(config(refer_root, out2, **cfg), segmenter=segmenter, progress=False)
    assert (full.calls, again.calls) == (4, 0)  # per image: its samples' forward and its baseline's
    assert {k: v for k, v in resumed.items() if k != "wall_time_s"} == \
        {k: v for k, v in whole.items() if k != "wall_time_s"}
    lines = (tmp_path / "full.json.samples.rank0.jsonl").read_text().splitlines()
    assert len(lines) == 3


def test_full_split_counts_are_checked_against_the_published_ones(refer_root, tmp_path, capsys):
    code = main(["eval", "--data-root", str(refer_root), "--dataset", "refcoco", "--split", "val",
                 "--method", "centre", "--out", str(tmp_path / "c.json")])
    assert code == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "DIFFERS from the published 10834" in out
    report = json.loads((tmp_path / "c.json").read_text())
    assert {"mIoU", "oIoU", "precision", "n_samples", "method", "dataset", "split"} <= set(report)
    assert report["expected_n_samples"] == 10834 and report["n_samples_as_published"] is False


def test_accelerate_shards_merge_to_the_single_process_numbers(refer_root, tmp_path, tiny_model_dir):
    args = ["eval", "--data-root", str(refer_root), "--dataset", "refcoco", "--split", "val",
            "--model", str(tiny_model_dir), "--device", "cpu"]
    # Both runs use one thread a process: float sums in another thread count may flip a pixel of the
    # random-weight model's near-flat maps, which would hide what this test is about (the merge).
    single_thread = {**os.environ, "OMP_NUM_THREADS": "1"}
    alone = subprocess.run([sys.executable, "-m", "napari_editseg.cli", *args, "--out", str(tmp_path / "one.json")],
                           capture_output=True, text=True, timeout=600, env=single_thread)
    assert alone.returncode == 0, alone.stderr[-3000:]
    # `--multi_gpu` is accelerate's torchrun launcher; without CUDA the processes use gloo on the CPU
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "napari_editseg.cli",
         *args, "--out", str(tmp_path / "two.json")],
        capture_output=True, text=True, timeout=600, env=single_thread,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["processes"] == 2 and len(list(tmp_path.glob("two.json.samples.rank*.jsonl"))) == 2
    for key in ("mIoU", "oIoU", "precision", "n_samples", "sum_intersection", "sum_union"):
        assert one[key] == two[key], key


@pytest.mark.skipif(not os.environ.get("REFER_DATA_ROOT"), reason="set REFER_DATA_ROOT to a real refer-layout root")
def test_real_refcoco_val_counts_and_a_baseline(tmp_path):
    root = os.environ["REFER_DATA_ROOT"]
    samples = read_dataset(root, "refcoco", "val")
    assert len(samples) == 10834
    report = evaluate(config(root, tmp_path / "r.json", method="centre", limit=200), progress=False)
    assert report["n_samples"] == 200 and report["failures"] == 0


# -- what goes wrong: bad data, kills, mistakes, hostile files -------------------------------

def test_a_malicious_refs_pickle_is_refused_and_never_runs(refer_root, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (refer_root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([{"split": "val", "x": Payload()}]))
    with pytest.raises(ValueError, match="names posix.system, which is not plain data"):
        read_dataset(refer_root, "refcoco", "val")
    assert not marker.exists()


def break_annotations(root: Path) -> None:
    """Four kinds of bad ground truth (five samples), and one good sample among them."""
    instances = json.loads((root / "refcoco" / "instances.json").read_text())
    anns = {a["id"]: a for a in instances["annotations"]}
    anns[10]["segmentation"] = [[1.0, 2.0]]  # a polygon of one point
    anns[31]["segmentation"] = []  # no polygon
    (root / "refcoco" / "instances.json").write_text(json.dumps(instances))
    refs = pickle.loads((root / "refcoco" / "refs(unc).p").read_bytes())
    refs.append({"ref_id": 105, "ann_id": 999, "image_id": 1, "split": "val",  # an annotation that is not there
                 "sentences": [{"sent": "ghost", "raw": "ghost", "sent_id": 1050}]})
    refs.append({"ref_id": 106, "ann_id": 10, "image_id": 77, "split": "val",  # an image that is not there
                 "sentences": [{"sent": "nowhere", "raw": "nowhere", "sent_id": 1060}]})
    refs.append({"ref_id": 107, "ann_id": 11, "image_id": 1, "split": "val",  # a good one among them
                 "sentences": [{"sent": "the pair", "raw": "the pair", "sent_id": 1070}]})
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs))


def test_bad_ground_truth_fails_its_own_samples_and_the_run_goes_on(refer_root, tmp_path):
    break_annotations(refer_root)
    report = evaluate(config(refer_root, tmp_path / "r.json", method="whole-image"), progress=False)
    assert report["n_samples"] == 6 and report["failures"] == 5
    records = {json.loads(line)["key"]: json.loads(line) for line in
               (tmp_path / "r.json.samples.rank0.jsonl").read_text().splitlines()}
    assert "malformed polygon" in records["100/1000"]["error"]
    assert "malformed polygon" in records["103/1030"]["error"]
    assert "annotation 999 is not in the annotations" in records["105/1050"]["error"]
    assert "image 77 is not in the annotations" in records["106/1060"]["error"]
    good = records["107/1070"]
    assert not good["failed"] and good["union"] == 40 * 50 and good["intersection"] > 0  # whole image: U = all


def test_a_parquet_file_without_image_info_is_one_clear_error(refer_root, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "parquet"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist([{"image": {"bytes": b"", "path": "x"}, "ref_list": "[]"}]),
                   folder / "refcoco_unc_val-00000-of-00001.parquet")
    with pytest.raises(ValueError, match="has no column image_info: not a refcoco-benchmark file"):
        read_dataset(folder, "refcoco", "val", layout="parquet")


def test_a_run_that_failed_to_load_its_model_does_not_block_the_corrected_command(refer_root, tmp_path,
                                                                                   tiny_model_dir, capsys):
    args = ["eval", "--data-root", str(refer_root), "--dataset", "refcoco", "--split", "val", "--device", "cpu",
            "--out", str(tmp_path / "r.json")]
    assert main(args + ["--model", str(tmp_path / "no-model")]) == 3
    assert main(args + ["--model", str(tiny_model_dir)]) == 0
    first = json.loads((tmp_path / "r.json").read_text())
    assert main(args + ["--model", str(tiny_model_dir)]) == 0  # everything resumed: no model is loaded
    again = json.loads((tmp_path / "r.json").read_text())
    assert again["settings"] == first["settings"] and again["settings"]["prior_resolutions"] == [4, 8]
    assert {k: v for k, v in again.items() if k != "wall_time_s"} == {k: v for k, v in first.items()
                                                                      if k != "wall_time_s"}


def test_failed_samples_are_retried_on_resume(tmp_path):
    root = write_refer(tmp_path / "refer", broken_image=3)
    out = tmp_path / "r.json"
    assert evaluate(config(root, out, method="whole-image"), progress=False)["failures"] == 1
    image = root / "images" / "mscoco" / "images" / "train2014" / "COCO_train2014_000000000003.jpg"
    io.imsave(image, np.zeros((30, 44, 3), np.uint8), check_contrast=False)  # the file is fixed
    report = evaluate(config(root, out, method="whole-image"), progress=False)
    assert report["failures"] == 0 and report["n_samples"] == 3


def test_the_data_root_is_part_of_a_run(refer_root, tmp_path):
    out = tmp_path / "r.json"
    evaluate(config(refer_root, out, method="centre"), progress=False)
    other = write_refer(tmp_path / "other")
    with pytest.raises(ValueError, match="holds results of another run .it differs in data_root"):
        evaluate(config(other, out, method="centre"), progress=False)


def test_the_callers_config_is_not_changed_and_a_missing_model_is_named(refer_root, tmp_path):
    cfg = config(refer_root, tmp_path / "r.json", method="centre")
    before = repr(cfg)
    evaluate(cfg, progress=False)
    assert repr(cfg) == before and cfg.split_by is None
    with pytest.raises(ValueError, match="method 'editseg' needs a model: set model to a hub id or a folder, not None"):
        evaluate(config(refer_root, tmp_path / "e.json"), progress=False)
    assert not (tmp_path / "e.json.run.json").exists()


def test_a_corrupt_record_in_the_middle_is_named_a_torn_last_line_is_dropped(refer_root, tmp_path):
    out = tmp_path / "r.json"
    whole = evaluate(config(refer_root, out, method="centre"), progress=False)
    records = tmp_path / "r.json.samples.rank0.jsonl"
    lines = records.read_text().splitlines()
    records.write_text("\n".join(lines) + '\n{"key": "103/10')  # a kill mid-line
    again = evaluate(config(refer_root, out, method="centre"), progress=False)
    assert again["mIoU"] == whole["mIoU"] and records.read_text().count("\n") == len(lines)
    records.write_text(lines[0] + "\nnot json\n" + "\n".join(lines[1:]) + "\n")
    with pytest.raises(ValueError, match="r.json.samples.rank0.jsonl, line 2, is not a sample record"):
        evaluate(config(refer_root, out, method="centre"), progress=False)


def test_a_batched_evaluation_scores_exactly_the_batched_masks(tmp_path, segmenter, count_calls, monkeypatch):
    monkeypatch.setitem(IMAGES, 3, IMAGES[1])  # the two val images at one size: one batch
    refer_root = write_refer(tmp_path / "refer")
    samples = read_dataset(refer_root, "refcoco", "val")
    groups = [[s for s in samples if s.image_key == key] for key in ("1", "3")]
    with count_calls(segmenter.model.unet) as forwards:
        report = evaluate(config(refer_root, tmp_path / "r.json", batch_size=2), segmenter=segmenter,
                          progress=False)
    sizes = {segmenter._model_size(segmenter.resolve_settings(), g[0].load_image().shape) for g in groups}
    assert forwards.calls == 2 * len(sizes) == 2  # both images in one forward (and their baselines in one)
    batched = segmenter.segment_images([g[0].load_image() for g in groups], [[s.sentence for s in g] for g in groups])
    expected = summarise([score_sample(s.key, r.mask, s.load_mask())
                          for g, results in zip(groups, batched) for s, r in zip(g, results)])
    for key in ("sum_intersection", "sum_union", "mIoU", "oIoU", "precision", "n_samples"):
        assert report[key] == expected[key], key


def test_a_broken_image_in_a_batch_fails_alone(tmp_path, segmenter):
    root = write_refer(tmp_path / "broken", broken_image=3)
    report = evaluate(config(root, tmp_path / "r.json", batch_size=2), segmenter=segmenter, progress=False)
    assert report["n_samples"] == 3 and report["failures"] == 1  # image 3's one sample; image 1's two scored
    with pytest.raises(ValueError, match="batch size"):
        evaluate(config(root, tmp_path / "other.json", batch_size=0), segmenter=segmenter, progress=False)


# -- issue 26: a huge annotation, a refs pickle that asks for gigabytes, outputs over inputs ---------------------
HUGE_SIZE = r"""
import json, sys
from napari_editseg.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code}))
"""


def test_a_200000_square_annotation_fails_its_sample_and_a_rerun_does_not_crash(refer_root, tmp_path):
    """pycocotools computes height × width in 32 bits: 200000 × 200000 wrote past its buffer and every
    rerun died at the same sample. Run in a child process, so that a crash would fail only this test."""
    instances = json.loads((refer_root / "refcoco" / "instances.json").read_text())
    for image in instances["images"]:
        if image["id"] == 3:
            image["height"] = image["width"] = 200_000
    instances["annotations"].append({"id": 32, "image_id": 1, "category_id": 1, "iscrowd": 1,
                                     "segmentation": {"size": [200_000, 200_000], "counts": [0, 5]}})
    (refer_root / "refcoco" / "instances.json").write_text(json.dumps(instances))
    refs = pickle.loads((refer_root / "refcoco" / "refs(unc).p").read_bytes())
    refs.append({"ref_id": 108, "ann_id": 32, "image_id": 1, "split": "val",  # an RLE claiming the same size
                 "sentences": [{"sent": "the crowd", "raw": "the crowd", "sent_id": 1080}]})
    (refer_root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs))
    out = tmp_path / "r.json"
    argv = ["eval", "--data-root", str(refer_root), "--dataset", "refcoco", "--split", "val", "--method",
            "whole-image", "--out", str(out)]
    for _ in range(2):  # the rerun retries the failed samples
        done = subprocess.run([sys.executable, "-c", HUGE_SIZE, *argv], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and json.loads(done.stdout.strip().splitlines()[-1]) == {"code": 0}, done.stderr
    report = json.loads(out.read_text())
    failed = {item["key"]: item["error"] for item in report["failed_samples"]}
    assert set(failed) == {"103/1030", "108/1080"} and report["n_samples"] == 4
    assert all("200000 x 200000 = 40000 M pixels is more than the 268 M" in e for e in failed.values())
    assert "failed 103/1030: ground truth: ValueError: annotation size 200000 x 200000" in done.stdout


@pytest.mark.parametrize("name, payload", [
    ("BINBYTES8", b"\x80\x04\x8e" + (1_800_000_000).to_bytes(8, "little")),
    ("BINUNICODE8", b"\x80\x04\x8d" + (1_800_000_000).to_bytes(8, "little")),
    ("FRAME", b"\x80\x04\x95" + (1_800_000_000).to_bytes(8, "little")),
    ("bytes(n)", b"\x80\x02c__builtin__\nbytes\nJ\x00\xd2\x49\x6b\x85R."),
])
def test_a_tiny_refs_pickle_cannot_take_gigabytes(refer_root, name, payload):
    """A 93-byte refs file took 1.8 GB: a length field or bytes(n) made the reader allocate it first."""
    import tracemalloc

    path = refer_root / "refcoco" / "refs(unc).p"
    path.write_bytes(payload.ljust(93, b"."))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="was not loaded") as info:
            read_dataset(refer_root, "refcoco", "val")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20, f"{name}: {peak / 2**20:.0f} MiB"
    assert "MemoryError" not in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("how", ["same", "hard link", "symlink", "an image"])
def test_the_report_never_replaces_an_input(refer_root, tmp_path, how, capsys):
    instances = refer_root / "refcoco" / "instances.json"
    target = {"same": instances, "an image": next((refer_root / "images").rglob("*000000000001.jpg"))}.get(how)
    if target is None:
        target = tmp_path / "report.json"
        (os.link if how == "hard link" else lambda src, dst: Path(dst).symlink_to(src))(instances, target)
    before = instances.read_bytes()
    code = main(["eval", "--data-root", str(refer_root), "--dataset", "refcoco", "--split", "val", "--method",
                 "whole-image", "--out", str(target)])
    err = capsys.readouterr().err
    assert code == 2 and "is an input file" in err and err.count("\n") == 1, err
    assert instances.read_bytes() == before


def test_report_names_with_glob_characters_resume_and_too_long_names_are_refused(refer_root, tmp_path, capsys):
    out = tmp_path / "r[1]*.json"
    for _ in range(2):
        evaluate(config(refer_root, out, method="whole-image"), progress=False)
    lines = (tmp_path / "r[1]*.json.samples.rank0.jsonl").read_text().splitlines()
    assert len(lines) == 3  # the rerun found the records (a glob of the name did not): nothing scored twice
    long_out = tmp_path / ("r" * 240 + ".json")  # legal, but its records' name would not be
    code = main(["eval", "--data-root", str(refer_root), "--dataset", "refcoco", "--split", "val", "--method",
                 "whole-image", "--out", str(long_out)])
    assert code == 2 and "more than the 255" in capsys.readouterr().err
