"""Kills and interrupts of real processes: nothing truncated, nothing lost, resumed runs end
where an uninterrupted run ends.

Each run is a real ``napari-editseg`` process that SIGKILLs (or SIGINTs) itself at a chosen
point: just before or after a chosen file is moved into place, halfway through writing a label
image, or as the evaluation starts scoring an image (optionally after a torn half record line).
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from skimage import io
from test_eval import write_refer

from napari_editseg.cli import main
from napari_editseg.files import PARTIAL, read_description

# Runs the CLI with one fault armed. argv: FAULT_JSON, then the CLI's arguments.
DRIVER = r"""
import json, os, signal, sys
fault = json.loads(sys.argv[1])
sig = getattr(signal, "SIG" + fault.get("signal", "KILL"))
# as in a terminal: a test run started in the background inherits SIGINT ignored, and Python then
# installs no KeyboardInterrupt handler
signal.signal(signal.SIGINT, signal.default_int_handler)

def fire():
    os.kill(os.getpid(), sig)

if fault["at"] in ("before", "after"):
    real_replace = os.replace
    def replace(src, dst, *args, **kwargs):
        hit = os.path.basename(str(dst)) == fault["name"]
        if hit and fault["at"] == "before":
            fire()
        real_replace(src, dst, *args, **kwargs)
        if hit and fault["at"] == "after":
            fire()
    os.replace = replace
elif fault["at"] == "midwrite":  # the label image's bytes half on disk
    import tifffile
    real_write = tifffile.imwrite
    def imwrite(path, *args, **kwargs):
        real_write(path, *args, **kwargs)
        if os.path.basename(str(path)).startswith("." + fault["name"] + "."):
            size = os.path.getsize(path)
            with open(path, "r+b") as handle:
                handle.truncate(size // 2)
            fire()
    tifffile.imwrite = imwrite
elif fault["at"] == "score":  # the n-th image of an evaluation, optionally after a torn record line
    import napari_editseg.eval.run as run
    real_score, seen = run._score_group, []
    def score_group(group, predict):
        seen.append(1)
        if len(seen) == fault["nth"]:
            if fault.get("torn"):
                [path] = [p for p in os.listdir(fault["folder"]) if p.endswith(".jsonl")]
                with open(os.path.join(fault["folder"], path), "a") as handle:
                    handle.write('{"key": "torn", "intersec')
            fire()
        return real_score(group, predict)
    run._score_group = score_group

from napari_editseg.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run_with_fault(fault: dict, args: list[str]) -> subprocess.CompletedProcess:
    # the same thread count as this process: another count may round a pixel of the random model's
    # near-flat maps differently, and the resumed results are compared with an in-process run
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", DRIVER, json.dumps(fault), *args], capture_output=True, text=True,
                          timeout=300, env=env)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def no_partials(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if PARTIAL in p.name]


def test_a_batch_killed_at_three_points_resumes_to_exactly_the_uninterrupted_result(tmp_path, picture,
                                                                                   tiny_model_dir):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        io.imsave(inputs / f"img{i}.png", np.roll(picture, 9 * i, axis=1), check_contrast=False)
    (inputs / "broken.png").write_bytes(b"not a picture")

    def args(out):
        return ["batch", str(inputs), "the red disc", "--out", str(out), "--model", str(tiny_model_dir),
                "--device", "cpu"]

    assert main(args(tmp_path / "whole")) == 0
    out = tmp_path / "killed"
    faults = [
        {"at": "midwrite", "name": "img1.tif"},  # img0 done, img1 half written
        {"at": "after", "name": "img1.tif"},  # img1 in place, nothing after it
        {"at": "before", "name": "batch_report.json"},  # every label in place, the final report not
    ]
    for fault in faults:
        done = run_with_fault(fault, args(out))
        assert done.returncode == -signal.SIGKILL, (fault, done.stderr[-2000:])
        for name in files_in(out):
            if name.endswith(".tif") and PARTIAL not in name:
                io.imread(out / name)  # whatever exists is whole
    assert main(args(out)) == 0
    assert files_in(out) == files_in(tmp_path / "whole") and no_partials(out)
    found = []
    for i in range(3):
        whole, resumed = (io.imread(tmp_path / d / f"img{i}.tif") for d in ("whole", "killed"))
        assert np.array_equal(whole, resumed)
        found.append(whole.any())
        assert read_description(out / f"img{i}.tif") == read_description(tmp_path / "whole" / f"img{i}.tif")
    assert sum(found) >= 2  # labels to compare, not empty images (the random model may find nothing in one)

    def comparable(folder):
        report = json.loads((folder / "batch_report.json").read_text())
        report.pop("this_run")
        for item in report["images"]:
            item["output"] = Path(item["output"]).name
        return report

    assert comparable(out) == comparable(tmp_path / "whole")


def test_an_evaluation_killed_at_three_points_resumes_to_the_same_report(tmp_path, tiny_model_dir):
    root = write_refer(tmp_path / "refer")

    def args(out):
        return ["eval", "--data-root", str(root), "--dataset", "refcoco", "--split", "val", "--model",
                str(tiny_model_dir), "--device", "cpu", "--out", str(out)]

    assert main(args(tmp_path / "whole" / "r.json")) == 0
    folder = tmp_path / "killed"
    folder.mkdir()
    out = folder / "r.json"
    faults = [
        {"at": "score", "nth": 1, "folder": str(folder)},  # model loaded, nothing scored
        {"at": "score", "nth": 2, "torn": True, "folder": str(folder)},  # one image scored, a torn line after it
        {"at": "before", "name": "r.json"},  # every record written, the report not
    ]
    for fault in faults:
        done = run_with_fault(fault, args(out))
        assert done.returncode == -signal.SIGKILL, (fault, done.stderr[-2000:])
    assert not out.exists()
    assert main(args(out)) == 0
    assert no_partials(folder)

    def comparable(path):
        report = json.loads(path.read_text())
        report.pop("wall_time_s")
        return report

    assert comparable(out) == comparable(tmp_path / "whole" / "r.json")
    records = [json.loads(line) for line in (folder / "r.json.samples.rank0.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in records) == ["100/1000", "100/1001", "103/1030"]  # torn line gone, none twice


def test_ctrl_c_while_writing_leaves_no_partial_file(tmp_path, picture, tiny_model_dir):
    """SIGINT as the overlay is about to be moved into place: the mask written before it stays
    whole, the overlay and the score map after it do not exist at all."""
    image = tmp_path / "in.png"
    io.imsave(image, picture, check_contrast=False)
    out = tmp_path / "out"
    out.mkdir()
    done = run_with_fault({"at": "before", "name": "o.png", "signal": "INT"}, [
        "segment", str(image), "the red disc", "--model", str(tiny_model_dir), "--device", "cpu",
        "-o", str(out / "m.png"), "--overlay", str(out / "o.png"), "--scores", str(out / "s.npy")])
    assert done.returncode == 130, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("napari-editseg: interrupted")
    assert "Traceback" not in done.stderr
    assert files_in(out) == ["m.png"]
    assert io.imread(out / "m.png").shape == picture.shape[:2]
