"""Records and replay under attack: a tampered record is one line naming the field, replay never writes over
its inputs, the sidecar is written whole or not at all, record text is echoed escaped, and a record never
makes the machine contact the hub. Real forwards of the tiny model wherever a record is replayed."""

import copy
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_editseg.cli import main
from napari_editseg.files import PARTIAL, write_labels
from napari_editseg.hub import check_identity, model_identity
from napari_editseg.planes import plane_signature
from napari_editseg.prompt import segment_prompt
from napari_editseg.record import (
    FORMAT,
    check_record,
    make_record,
    points_entry,
    read_records,
    slice_entry,
    write_export,
)

CLICKS = ([(14.0, 15.0)], [(3.0, 36.0)])


def picture_for_records() -> np.ndarray:
    """A 32×40 RGB picture: a bright disc on a darker textured ground."""
    rng = np.random.default_rng(26)
    image = rng.integers(40, 100, size=(32, 40, 3)).astype(np.uint8)
    rows, cols = np.mgrid[:32, :40]
    image[(rows - 14) ** 2 + (cols - 15) ** 2 < 64] = (220, 50, 40)
    return image


def make_case_record(segmenter, picture, expression="the red disc", label=1) -> tuple[dict, np.ndarray]:
    """A record as the widget makes one (a run on a whole RGB image, then clicks), and the mask it painted."""
    segmenter.set_image(picture)
    result = segmenter.refine(segment_prompt(segmenter, expression), *CLICKS)
    record = make_record(
        label=label, expression=expression, box=None, settings=result.settings.to_dict(),
        model=model_identity(segmenter.model), device=str(segmenter.device), dtype=segmenter.model.precision,
        image={"layer": "picture", "shape": list(picture.shape), "dtype": str(picture.dtype), "rgb": True,
               "contrast_limits": None, "composite": None},
        slices=[slice_entry((), plane_signature(picture), points_entry(), points_entry(*CLICKS))],
        overwrite=False, confidence=result.confidence)
    return record, result.mask


@pytest.fixture(scope="module")
def case(segmenter, tmp_path_factory):
    """An image file, its labels (two records) exported with their sidecar, as the widget writes them."""
    folder = tmp_path_factory.mktemp("replay")
    picture = picture_for_records()
    first, mask = make_case_record(segmenter, picture)
    second, other = make_case_record(segmenter, picture, "the background", label=2)
    labels = np.zeros(picture.shape[:2], np.uint32)
    labels[mask] = 1
    labels[other & (labels == 0)] = 2
    write_labels(folder / "image.tif", picture)
    sidecar = write_export(folder / "labels.tif", labels, [first, second])
    return {"folder": folder, "image": folder / "image.tif", "labels": folder / "labels.tif", "sidecar": sidecar,
            "records": [first, second], "picture": picture, "array": labels}


def replay_args(case, *more):
    return ["replay", str(case["sidecar"]), "--image", str(case["image"]), *more]


def one_error_line(err: str) -> bool:
    return err.count("\n") == 1 and err.startswith("napari-editseg: error: ") and "Traceback" not in err


# -- the format ---------------------------------------------------------------------------------------
def test_records_the_api_makes_follow_the_format_and_read_back(case):
    content = read_records(case["sidecar"])
    assert content["records"] == [check_record(r) for r in case["records"]]
    assert content["shape"] == [32, 40]


def test_the_export_writes_its_sidecar_whole_or_not_at_all(case, tmp_path, monkeypatch):
    """A write that fails halfway (a full disk) leaves the earlier sidecar as it was, and no partial file."""
    labels = tmp_path / "l.tif"
    sidecar = write_export(labels, case["array"], case["records"][:1])
    before = sidecar.read_bytes()
    real_write_text = Path.write_text

    def full_disk(self, text, *args, **kwargs):
        real_write_text(self, text[:len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_export(labels, case["array"], case["records"])
    monkeypatch.undo()
    assert sidecar.read_bytes() == before and len(read_records(sidecar)["records"]) == 1
    assert not [p for p in tmp_path.iterdir() if PARTIAL in p.name]


def test_a_replay_reproduces_the_labels_and_writes_png_and_tif(case, capsys):
    for name in ("again.tif", "again.png"):  # a PNG output could never be written before (uint32 labels)
        out = case["folder"] / name
        assert main(replay_args(case, "-o", str(out), "--check", str(case["labels"]))) == 0
        from napari_editseg.image_files import read_array

        assert np.array_equal(read_array(out), case["array"])
    assert "label 2 (the background): identical" in capsys.readouterr().out


def test_a_record_made_before_a_setting_existed_replays_with_its_behaviour_then(case, segmenter):
    """Settings added since a record was written take the value that was their behaviour then (all of P0
    for restart_share, no walk for restart ...), not today's defaults, which would paint other labels."""
    from napari_editseg.core.settings import BEFORE_IT_EXISTED, SegmentationSettings
    from napari_editseg.replay import replay

    old = copy.deepcopy(case["records"][0])
    for name in BEFORE_IT_EXISTED:
        del old["settings"][name]
    result = replay(old, case["picture"], segmenter=segmenter)
    assert {name: getattr(result.settings, name) for name in BEFORE_IT_EXISTED} == BEFORE_IT_EXISTED
    today = SegmentationSettings()
    assert any(getattr(today, name) != value for name, value in BEFORE_IT_EXISTED.items())
    again = replay(case["records"][0], case["picture"], segmenter=segmenter)  # a record that has them keeps them
    assert again.settings.restart_share == case["records"][0]["settings"]["restart_share"]


def test_a_grey_plane_is_given_to_the_core_as_its_contrast_limits_show_it():
    from napari_editseg.planes import plane_as_seen

    stack = np.array([[[100, 2097.5], [4095, 5000]]]).astype(np.float32)  # data past its limits, 100..4095
    plane = plane_as_seen(stack, (0,), rgb=False, contrast_limits=(100, 4095))
    assert plane.dtype == np.float32 and plane.tolist() == [[0.0, 0.5], [1.0, 1.0]]
    assert plane_as_seen(stack, (0,), False, (7, 7)).tolist() == [[0.0, 0.0], [0.0, 0.0]]  # flat limits: nothing
    rgb = np.zeros((1, 2, 2, 3), np.uint8)
    assert plane_as_seen(rgb, (0,), rgb=True, contrast_limits=None) is not None


def test_a_word_less_prompt_keeps_its_points_out_of_the_result_so_clicks_can_be_taken_back(segmenter):
    picture = picture_for_records()
    segmenter.set_image(picture)
    points = [(14.0, 15.0)]
    base = segment_prompt(segmenter, "", positive=points)
    assert base.positive == () and base.negative == ()
    again = segmenter.refine(base, points)  # the points as clicks give the word-less result itself
    assert np.array_equal(again.mask, segmenter.segment_points(points).mask)


# -- replay never writes over what it reads --------------------------------------------------------------
def output_over(original: Path, how: str, folder: Path) -> Path:
    """An output path that is ``original`` under another name (``how``); a .tif for a record file."""
    suffix = ".tif" if original.suffix == ".json" else original.suffix
    if how == "same":
        return original
    if how == "other case":
        return original.with_name(original.name.upper())
    if how == "folder symlink":
        (folder / "same-folder").symlink_to(original.parent)
        return folder / "same-folder" / original.name
    output = folder / f"link{suffix}"
    if how == "hard link":
        os.link(original, output)
    else:
        output.symlink_to(original)
    return output


LINKS = ("same", "hard link", "symlink", "folder symlink", "other case")


@pytest.mark.parametrize("target, how", [(t, h) for t in ("image", "labels") for h in LINKS]
                         + [("sidecar", h) for h in ("hard link", "symlink")])
def test_replay_never_writes_over_its_inputs(case, tmp_path, target, how, capsys):
    output = output_over(case[target], how, tmp_path)
    before = {k: case[k].read_bytes() for k in ("image", "labels", "sidecar")}
    code = main(replay_args(case, "-o", str(output), "--check", str(case["labels"])))
    err = capsys.readouterr().err
    assert code == 2 and one_error_line(err), err
    role = {"image": "--image", "labels": "--check", "sidecar": "record"}[target]
    assert f"is the {role} file" in err
    assert {k: case[k].read_bytes() for k in before} == before


def test_replay_cannot_compare_its_output_with_itself(case, tmp_path, capsys):
    """The issue's case: a record that differs by thousands of pixels reported "identical" because
    the output was written to the --check file before the check read it."""
    changed = tmp_path / "changed.tif"
    write_labels(changed, np.where(case["array"] == 1, 0, case["array"]).astype(np.uint32))
    assert main(replay_args(case, "--check", str(changed))) == 1
    assert "pixels differ" in capsys.readouterr().out
    before = changed.read_bytes()
    assert main(replay_args(case, "-o", str(changed), "--check", str(changed))) == 2
    assert "is the --check file" in capsys.readouterr().err and changed.read_bytes() == before


def test_replay_refuses_outputs_it_cannot_write_before_any_model_loads(case, tmp_path, capsys):
    sidecar = json.loads(case["sidecar"].read_text())
    sidecar["records"][0]["label"] = 70000
    sidecar["records"][0]["model"]["id"] = str(tmp_path / "no-model")  # would fail if it were loaded
    big = tmp_path / "big.editseg.json"
    big.write_text(json.dumps(sidecar))
    for output, message in (("x.png", "a PNG holds labels up to 65535"), ("x.jpg", "use .tif, .tiff, .png"),
                            ("x" * 252 + ".tif", "more than the 255")):
        code = main(["replay", str(big), "--image", str(case["image"]), "-o", str(tmp_path / output)])
        err = capsys.readouterr().err
        assert code == 2 and message in err and one_error_line(err), err


def with_change(case, change) -> dict:
    sidecar = json.loads(case["sidecar"].read_text())
    change(sidecar, sidecar["records"][0])
    return sidecar


@pytest.mark.parametrize("change, message", [
    (lambda s, r: r["slices"][0].update(index=[5]), "field 'slices[0].index' must be 0 plane indices inside"),
    (lambda s, r: r["settings"].update(mask_threshold="high"), "field 'settings': setting 'mask_threshold'"),
    (lambda s, r: r["settings"].update(mask_treshold=0.4), "field 'settings': unknown setting 'mask_treshold'"),
    (lambda s, r: r.update(expression="", box=None), "needs positive points or a box"),
    (lambda s, r: r["image"].update(rgb=False), "field 'image.contrast_limits' is missing"),
    (lambda s, r: r["image"].update(shape=[32, 40, 5]), "field 'image.shape' must be H×W×3 or H×W×4"),
    (lambda s, r: r["model"].update(revision="main"), "field 'model.revision' must be a 40-digit hub commit"),
    (lambda s, r: r.update(device="meta"), "field 'device' must be cpu, mps, cuda or cuda:N"),
    (lambda s, r: s.update(shape=[3, 4]), "the record file's labels have shape (3, 4), not the image's (32, 40)"),
    (lambda s, r: s.update(format="napari-editseg.record/2"), "not a napari-editseg record file"),
    (lambda s, r: r.pop("slices"), "record 1 (label 1): field 'slices' is missing"),
    (lambda s, r: r.update(label=0), "field 'label' must be a whole number from 1 to 4294967295 (found 0)"),
    (lambda s, r: r.update(label=2**40), "field 'label' must be a whole number from 1 to 4294967295"),
    (lambda s, r: r.update(confidence="INFINITY"), "field 'confidence' must be a finite number (found inf)"),
    (lambda s, r: r["slices"][0]["clicks"].update(positive=[[1.0, "INFINITY"]]),
     "field 'slices[0].clicks.positive[0][1]' must be a finite number"),
], ids=["index", "setting value", "setting name", "no prompt", "grey without limits", "five channels",
        "revision", "device", "labels shape", "format", "missing field", "label 0", "label 2**40",
        "infinite confidence", "infinite click"])
def test_the_schema_names_what_is_wrong(case, tmp_path, change, message, capsys):
    path = tmp_path / "changed.editseg.json"
    path.write_text(json.dumps(with_change(case, change)).replace('"INFINITY"', "1e999"))
    assert main(replay_args(case)[:1] + [str(path)] + replay_args(case)[2:]) == 2
    err = capsys.readouterr().err
    assert message in err and one_error_line(err), err


def test_a_record_file_too_large_to_be_one_is_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "huge.editseg.json"
    with path.open("wb") as handle:
        handle.truncate(300 * 2**20)  # sparse: no disk used
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("the file was read"))
    with pytest.raises(ValueError, match="larger than a record file can be"):
        read_records(path)


# -- tampered records: one line naming the field, never a traceback ------------------------------------------
def tamperings(record: dict) -> list[tuple[str, str]]:
    """Every (field path, change) that can be made to a record, in a fixed order."""
    changes = ["delete", "null", "text", "negative", "huge", "list", "object", "true", "infinite", "escape"]
    paths: list[tuple] = []

    def walk(value, path):
        paths.append(path)
        if isinstance(value, dict):
            for key in value:
                walk(value[key], path + (key,))
        elif isinstance(value, list):
            for i, item in enumerate(value[:2]):
                walk(item, path + (i,))

    walk(record, ())
    return [(path, change) for path in paths[1:] for change in changes]


def tampered(record: dict, path: tuple, change: str):
    """``record`` with the field at ``path`` changed; JSON text (so that infinities stay in it)."""
    record = copy.deepcopy(record)
    *parents, last = path
    holder = record
    for key in parents:
        holder = holder[key]
    value = {"null": None, "text": "x", "negative": -7, "huge": 10**30, "list": [1, "a"], "object": {"a": 1},
             "true": True, "infinite": "INFINITY", "escape": "\x1b[2J\x1b]0;owned\x07"}.get(change)
    if change == "delete":
        del holder[last]
    else:
        holder[last] = value
    return json.dumps({"format": FORMAT, "records": [record]}).replace('"INFINITY"', "1e999")


WHOLE_FILE = {  # damage to the file rather than to a field
    "empty": b"", "truncated": None, "not utf-8": b'{"format": "\xff\xfe"}', "a list": b"[1, 2]",
    "nested 100000 deep": b"[" * 100_000 + b"]" * 100_000, "NaN": None, "no records": None,
    "records not a list": None, "a record that is a number": None, "another format": b'{"format": "x/2"}',
}


def whole_file_damage(name: str, good: bytes) -> bytes:
    content = json.loads(good)
    if name == "truncated":
        return good[:len(good) // 2]
    if name == "NaN":
        return good.replace(b'"overwrite": false', b'"overwrite": NaN')
    if name in ("no records", "records not a list", "a record that is a number"):
        content["records"] = {"no records": [], "records not a list": {"a": 1},
                              "a record that is a number": [3]}[name]
        return json.dumps(content).encode()
    return WHOLE_FILE[name]


def test_at_least_fifty_tampered_records_give_one_line_each_and_no_traceback(case, tmp_path, capsys, monkeypatch):
    """Generated deterministically: every field of a real record, each changed ten ways (a sample of
    120 of them), and ten kinds of damage to the file. A change that still makes a valid record
    (another label, another threshold) replays and is compared; the rest are one line naming the field."""
    import socket

    contacts = []
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: contacts.append(address))
    record = case["records"][0]
    variants = random.Random(26).sample(tamperings(record), 120)
    files = [(f"{'.'.join(map(str, path))} {change}", tampered(record, path, change).encode())
             for path, change in variants]
    good = case["sidecar"].read_bytes()
    files += [(name, whole_file_damage(name, good)) for name in WHOLE_FILE]
    outcomes: dict[int, int] = {}
    named_field = 0
    for n, (what, content) in enumerate(files):
        sidecar = tmp_path / f"t{n}.editseg.json"
        sidecar.write_bytes(content)
        try:
            code = main(["replay", str(sidecar), "--image", str(case["image"]), "--check", str(case["labels"])])
        except BaseException as error:  # noqa: BLE001  (what the test is about: nothing escapes)
            pytest.fail(f"{what}: {type(error).__name__}: {error}")
        out, err = capsys.readouterr()
        outcomes[code] = outcomes.get(code, 0) + 1
        assert "Traceback" not in out + err and "\x1b" not in out + err, what
        if code in (2, 3):
            assert one_error_line(err), (what, err)
            named_field += "field '" in err
        else:
            assert code in (0, 1) and all(line.startswith("napari-editseg: warning")
                                          for line in err.splitlines()), (what, err)  # each thing said once
    assert len(files) >= 50 and contacts == []
    assert outcomes.get(2, 0) >= 80 and named_field >= 70, outcomes  # most changes are refused, naming the field


def test_record_text_is_echoed_escaped(case, tmp_path, capsys):
    sidecar = json.loads(case["sidecar"].read_text())
    sidecar["records"][1]["expression"] = "the background\x1b[2J\x1b[1;1HALL GOOD\u202e"
    sidecar["records"][1]["versions"]["torch"] = "0.0\x1b[31m"
    path = tmp_path / "escape.editseg.json"
    path.write_text(json.dumps(sidecar))
    main(["replay", str(path), "--image", str(case["image"]), "--check", str(case["labels"])])
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err and "\u202e" not in out + err
    assert "the background\\x1b[2J\\x1b[1;1HALL GOOD\\u202e" in out and "0.0\\x1b[31m" in err


# -- the model a record names ----------------------------------------------------------------------------
def test_a_record_of_another_hub_revision_is_refused():
    recorded = {"id": "someone/model", "revision": "a" * 40, "folder_sha256": None}
    check_identity(recorded, {"id": "someone/model", "revision": "a" * 40, "folder_sha256": None})
    with pytest.raises(ValueError, match="hub revision differs from the record's"):
        check_identity(recorded, {"id": "someone/model", "revision": "b" * 40, "folder_sha256": None})
    with pytest.raises(ValueError, match="folder's content differs"):
        check_identity({**recorded, "revision": None, "folder_sha256": "0" * 64},
                       {"id": "x", "revision": None, "folder_sha256": "1" * 64})


RECORDED_BY_ID = r"""
import json, socket, sys
contacts = []
real_connect = socket.socket.connect
def connect(self, address):
    contacts.append(str(address))
    raise OSError("no network in this test")
socket.socket.connect = connect
def getaddrinfo(host, *args, **kwargs):  # a name lookup is a contact too (and comes first where DNS fails)
    contacts.append(str(host))
    raise socket.gaierror("no network in this test")
socket.getaddrinfo = getaddrinfo
from napari_editseg.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "contacts": contacts}))
"""


def test_a_record_never_makes_the_machine_contact_the_hub_and_its_revision_is_checked(case, tmp_path,
                                                                                       tiny_model_dir):
    """Online (no HF_HUB_OFFLINE), from a Hugging Face cache laid out as the hub writes it: a record
    naming an id that is not cached ends in one line without a connection attempt; one naming the
    cached id at another commit is refused by its revision."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-editor"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_HUB_CACHE=str(tmp_path / "hub"), HF_HOME=str(tmp_path / "home"))
    sidecar = json.loads(case["sidecar"].read_text())
    results = {}
    for name, model in (("not cached", {"id": "someone/not-cached", "revision": "c" * 40, "folder_sha256": None}),
                        ("other commit", {"id": "someone/tiny-editor", "revision": "d" * 40, "folder_sha256": None})):
        for record in sidecar["records"]:
            record["model"] = model
        path = tmp_path / f"{name}.editseg.json"
        path.write_text(json.dumps(sidecar))
        done = subprocess.run([sys.executable, "-c", RECORDED_BY_ID, "replay", str(path), "--image",
                               str(case["image"])], capture_output=True, text=True, timeout=300, env=env)
        results[name] = (json.loads(done.stdout.strip().splitlines()[-1]), done.stderr)
    (not_cached, err), (other, other_err) = results["not cached"], results["other commit"]
    assert not_cached == {"code": 3, "contacts": []} and one_error_line(err), err
    assert "someone/not-cached" in err and "not available" in err
    assert other == {"code": 2, "contacts": []} and "hub revision differs from the record's" in other_err
