"""The widget's state without a display: a Session driven with napari's layer models only,
records and their replay (API and CLI), and where models come from. Real forwards throughout."""

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from napari.layers import Image, Labels

from napari_editseg import _controls, hub
from napari_editseg._runstate import Prompt, Session, Source
from napari_editseg.cli import main
from napari_editseg.files import write_labels
from napari_editseg.record import plane_signature, read_records, replay, write_export

KEY = ("tiny", "cpu")


@pytest.fixture()
def session(segmenter):
    session = Session()
    session.add_model(KEY, segmenter)
    return session


def segment(session, source, prompt, indices, labels, label_id=None, overwrite=False):
    run = session.new_run(source, prompt, indices, label_id or session.next_label(labels), overwrite, KEY, labels)
    for index, result in session.segment(run):
        session.collect(run, index, result)
    session.paint(run, labels)
    return run


def test_a_run_on_a_stack_is_one_undo_step_and_the_table_follows(session, picture):
    stack = Image(np.stack([picture[..., c] for c in range(3)]))
    labels = Labels(np.zeros(stack.data.shape, np.uint32))
    run = segment(session, Source(stack), Prompt("the disc", overrides={"mask_threshold": 0.0}),
                  [(0,), (1,), (2,)], labels)
    assert run.label_id == 1 and (labels.data == 1).all()
    assert list(labels.features["index"]) == [1]
    labels.undo()
    session.sync(labels)  # the widget calls this on the layer's events
    assert not labels.data.any() and len(labels.features) == 0 and session.next_label(labels) == 1
    labels.redo()
    session.sync(labels)
    assert list(labels.features["expression"]) == ["the disc"]


def test_planes_are_encoded_once_per_content(session, segmenter, picture, count_calls):
    image = Image(picture)
    with count_calls(segmenter.model.vae.encoder) as encodes:
        for expression in ("the disc", "the square", "the background"):
            segment(session, Source(image), Prompt(expression), [()], Labels(np.zeros((45, 60), np.uint32)))
    assert encodes.calls == 1
    session.latent_cache = 1  # room for one plane: A, B, A encodes three times
    a, b = picture[:, ::-1].copy(), picture[::-1].copy()
    with count_calls(segmenter.model.vae.encoder) as encodes:
        for plane in (a, b, a):
            session.set_plane(segmenter, plane)
    assert encodes.calls == 3


def test_export_and_the_replay_command_reproduce_labels_bit_for_bit(session, picture, tmp_path, tiny_model_dir):
    session.identities[KEY] = hub.model_identity(session.segmenters[KEY].model)
    image = Image(picture)
    labels = Labels(np.zeros((45, 60), np.uint32))
    run = segment(session, Source(image), Prompt("the red disc", box=(2, 3, 40, 50)), [()], labels)
    session.begin_gesture(labels)  # a click, as the widget re-scores it
    results = dict(session.rescore(run, {"mask_threshold": 0.4}, {(): ([(20.0, 18.0)], [(5.0, 55.0)])}))
    session.apply(run, results, {(): ([(20.0, 18.0)], [(5.0, 55.0)])})
    session.end_gesture()
    segment(session, Source(image), Prompt("", clicks={(): ([(30.0, 45.0)], [])}), [()], labels)
    assert set(np.unique(labels.data)) == {0, 1, 2}
    records = [labels.metadata["editseg"][label] for label in (1, 2)]
    sidecar = write_export(tmp_path / "labels.tif", labels.data, records)
    assert json.loads(sidecar.read_text())["records"][0]["settings"]["mask_threshold"] == 0.4
    write_labels(tmp_path / "image.tif", picture)
    argv = ["replay", str(sidecar), "--image", str(tmp_path / "image.tif"), "--check", str(tmp_path / "labels.tif")]
    assert main(argv) == 0
    changed = labels.data.copy()
    changed[0, 0] = 1 if changed[0, 0] != 1 else 0
    write_labels(tmp_path / "changed.tif", changed)
    assert main(argv[:-1] + [str(tmp_path / "changed.tif")]) == 1
    first = replay(records[0], picture)  # the API call, loading the recorded model folder
    assert np.array_equal(first.mask & (labels.data != 2), labels.data == 1)


def test_replay_refuses_other_data_and_other_models(session, picture, tmp_path, tiny_two_level_dir, capsys):
    image = Image(picture)
    labels = Labels(np.zeros((45, 60), np.uint32))
    segment(session, Source(image), Prompt("the red disc"), [()], labels)
    record = labels.metadata["editseg"][1]
    with pytest.raises(ValueError, match="differs from the one label 1 was made on"):
        replay(record, picture[::-1].copy())
    record = {**record, "model": {**record["model"], "folder_sha256": "0" * 64}}
    sidecar = write_export(tmp_path / "l.tif", labels.data, [record])
    write_labels(tmp_path / "image.tif", picture)
    assert main(["replay", str(sidecar), "--image", str(tmp_path / "image.tif")]) == 2
    assert "model folder's content differs" in capsys.readouterr().err


def test_a_composite_record_is_refused_by_the_cli_with_a_reason(session, picture, tmp_path, capsys):
    channels = [Image(picture[..., c], name=name, colormap=cmap)
                for c, (name, cmap) in enumerate([("r", "red"), ("g", "green"), ("b", "blue")])]
    labels = Labels(np.zeros((45, 60), np.uint32))
    segment(session, Source(channels[0], channels), Prompt("the red disc"), [()], labels)
    sidecar = write_export(tmp_path / "l.tif", labels.data, [labels.metadata["editseg"][1]])
    write_labels(tmp_path / "r.tif", picture[..., 0])
    assert main(["replay", str(sidecar), "--image", str(tmp_path / "r.tif")]) == 2
    assert "composite of layers (r, g, b)" in capsys.readouterr().err


def test_word_less_runs_need_a_box_or_clicks_on_every_slice(session, picture):
    stack = Image(np.stack([picture[..., 0]] * 2))
    with pytest.raises(ValueError, match=r"1 slice\(s\) have none"):
        session.new_run(Source(stack), Prompt("", clicks={(0,): ([(3.0, 4.0)], [])}), [(0,), (1,)], 1, False, KEY)


def test_records_read_back_and_name_what_they_need(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_records(tmp_path / "none.json")
    (tmp_path / "x.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a napari-editseg record file"):
        read_records(tmp_path / "x.json")
    assert plane_signature(np.zeros((2, 2), np.uint8)) != plane_signature(np.zeros((2, 2), np.float32))


# -- models: hub ids, folders, downloads ------------------------------------------------------------
def test_needed_files_pick_one_weights_file_per_component():
    files = ["model_index.json", "README.md", "instruct-pix2pix-00-22000.ckpt", "instruct-pix2pix-00-22000.safetensors",
             "scheduler/scheduler_config.json", "safety_checker/config.json", "safety_checker/model.safetensors",
             "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/pytorch_model.bin",
             "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
             "tokenizer/vocab.json", "unet/config.json", "unet/diffusion_pytorch_model.bin",
             "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
             "vae/config.json", "vae/diffusion_pytorch_model.bin"]
    assert hub.needed_files(files) == [
        "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
        "vae/diffusion_pytorch_model.bin", "text_encoder/config.json", "text_encoder/model.safetensors",
        "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json", "scheduler/scheduler_config.json"]


def test_needed_files_of_a_transformer_editor_take_every_shard_and_both_text_encoders():
    files = ["model_index.json", "flux1-kontext-dev.safetensors", "scheduler/scheduler_config.json",
             "text_encoder/config.json", "text_encoder/model.safetensors",
             "text_encoder_2/config.json", "text_encoder_2/model.safetensors.index.json",
             "text_encoder_2/model-00001-of-00002.safetensors", "text_encoder_2/model-00002-of-00002.safetensors",
             "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer_2/spiece.model",
             "tokenizer_2/tokenizer.json", "transformer/config.json",
             "transformer/diffusion_pytorch_model.safetensors.index.json",
             "transformer/diffusion_pytorch_model-00001-of-00003.safetensors",
             "transformer/diffusion_pytorch_model-00002-of-00003.safetensors",
             "transformer/diffusion_pytorch_model-00003-of-00003.safetensors",
             "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
    wanted = hub.needed_files(files)
    assert set(wanted) == set(files) - {"flux1-kontext-dev.safetensors"}


def test_download_progress_reports_bytes_and_a_cancel_stops_it():
    reports, cancelled = [], threading.Event()
    bar = hub.progress_bridge(reports.append, cancelled)(total=100, desc="unet/weights", unit="B")
    bar.update(40)
    bar.update(30)
    assert reports == [("unet/weights", 40, 100), ("unet/weights", 70, 100)]
    cancelled.set()
    with pytest.raises(hub.DownloadCancelled):
        bar.update(30)


def test_a_folder_is_named_by_its_content(tiny_model_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert hub.folder_hash(str(copy)) == hub.folder_hash(str(tiny_model_dir))
    (copy / "scheduler" / "scheduler_config.json").write_text("{}")
    assert hub.folder_hash(str(copy)) != hub.folder_hash(str(tiny_model_dir))
    assert hub.not_available_message(str(copy / "gone")).startswith("The model folder")
    assert "--" not in hub.not_available_message("someone/model")


def test_a_hub_id_is_recorded_with_its_cached_revision(tiny_model_dir, tmp_path):
    """Offline, from a Hugging Face cache laid out as the hub writes it."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-editor"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = ("from napari_editseg import EditSegmenter; from napari_editseg.hub import model_identity; "
            "print(model_identity(EditSegmenter.from_pretrained('someone/tiny-editor', device='cpu').model))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"'revision': '{commit}'" in done.stdout and "'id': 'someone/tiny-editor'" in done.stdout


def test_every_control_row_is_a_setting_with_bounds_the_settings_accept():
    for spec in _controls.specs():
        assert spec.help
        if spec.kind in ("float", "int"):
            assert _controls.accepts(spec.name, spec.minimum) and _controls.accepts(spec.name, spec.maximum)
            assert spec.minimum <= (spec.start if spec.auto else spec.default) <= spec.maximum
        if spec.kind == "choice":
            assert spec.default in spec.choices


# -- issue 26: run identity --------------------------------------------------------------------------
def test_a_cancelled_run_never_sets_its_plane_under_a_later_run(session, segmenter, picture):
    """Issue 26's race, made deterministic with events: Cancel on A while its plane is still being read,
    Segment on B; B, once its plane is set, lets A go on and waits until A has either set its own plane
    (the race: B's forward would then see A) or ended. B must paint B's mask, A nothing. Every iteration
    is the same interleaving; EDITSEG_RACE_RUNS=50 repeats it 50 times (the suite: 10)."""
    image_a, image_b = Image(picture), Image(np.ascontiguousarray(picture[::-1, ::-1]))
    alone = segment(session, Source(image_b), Prompt("the red disc"), [()], Labels(np.zeros((45, 60), np.uint32)))
    expected = alone.masks[()]
    real_set_plane = session.set_plane
    for iteration in range(int(os.environ.get("EDITSEG_RACE_RUNS", "10"))):
        gate, reading, a_set = threading.Event(), threading.Event(), threading.Event()
        source_a = Source(image_a)
        read = source_a.plane
        source_a.plane = lambda index: (reading.set(), gate.wait(10), read(index))[2]
        run_a = session.new_run(source_a, Prompt("the red disc"), [()], 1, False, KEY)
        yielded_a = []
        thread_a = threading.Thread(target=lambda: yielded_a.extend(session.segment(run_a)))

        def set_plane(model, plane):
            signature = real_set_plane(model, plane)
            if threading.current_thread() is thread_a:
                a_set.set()
            else:  # B: its plane is set; A may go on now
                gate.set()
                while not a_set.is_set() and thread_a.is_alive():
                    a_set.wait(0.005)
            return signature

        session.set_plane = set_plane
        try:
            thread_a.start()
            assert reading.wait(10)
            session.cancel(run_a)  # Cancel on A while its plane is still being read
            labels_b = Labels(np.zeros((45, 60), np.uint32))
            run_b = session.new_run(Source(image_b), Prompt("the red disc"), [()], 1, False, KEY, labels=labels_b)
            for index, result in session.segment(run_b):
                session.collect(run_b, index, result)
            thread_a.join(10)
        finally:
            session.set_plane = real_set_plane
        assert yielded_a == [] and not a_set.is_set(), f"iteration {iteration}: the cancelled run went on"
        assert session.paint(run_b, labels_b)
        assert np.array_equal(labels_b.data == 1, expected), f"iteration {iteration}: B painted another image"
        assert not session.paint(run_a, Labels(np.zeros((45, 60), np.uint32)))  # a cancelled run paints nothing


def test_a_run_paints_only_into_the_layer_it_started_with(session, picture):
    labels, other = Labels(np.zeros((45, 60), np.uint32)), Labels(np.zeros((45, 60), np.uint32))
    run = session.new_run(Source(Image(picture)), Prompt("the red disc"), [()], 1, False, KEY, labels=labels)
    for index, result in session.segment(run):
        session.collect(run, index, result)
    with pytest.raises(ValueError, match="only into the labels layer it started with"):
        session.paint(run, other)
    assert not other.data.any()


# -- issue 23: the current object, commit and clear, empty labels ---------------------------------------
def test_segment_again_replaces_the_current_object_commit_starts_the_next(session, picture):
    image, labels = Image(picture), Labels(np.zeros((45, 60), np.uint32))

    def press(expression, **overrides):
        label = session.label_for(labels, session.next_label(labels))
        return segment(session, Source(image), Prompt(expression, overrides=overrides), [()], labels, label)

    first = press("the red disc")
    again = press("the red disc", seed=3)  # a changed setting: the same object again, not a new label
    assert again.label_id == first.label_id == 1 and set(np.unique(labels.data)) == {0, 1}
    assert list(labels.metadata["editseg"]) == [1] and labels.metadata["editseg"][1]["settings"]["seed"] == 3
    assert np.array_equal(labels.data == 1, again.masks[()])  # replaced, not added to
    assert session.commit() is again and session.run is None
    second = press("the blue square")
    assert second.label_id == 2 and session.present(labels) == [1, 2]
    assert session.clear() is second and 2 not in labels.data and 1 in labels.data
    labels.undo()  # Clear is one undo step
    assert 2 in labels.data


def test_no_run_paints_an_empty_label_or_reports_pixels_it_did_not_paint(session, picture):
    labels = Labels(np.full((45, 60), 7, np.uint32))  # every pixel already holds another label
    run = session.new_run(Source(Image(picture)), Prompt("the red disc", overrides={"mask_threshold": 0.0}), [()],
                          session.next_label(labels), False, KEY, labels=labels)
    for index, result in session.segment(run):
        session.collect(run, index, result)
    assert session.paintable(run, labels) == 0
    assert "hold other labels" in session.nothing_painted(run)
    labels.data[:, :30] = 0  # half of it free: the status counts what the label holds
    assert session.paint(run, labels)
    text = session.summary(run, 0.1)
    assert f"{int((labels.data == 8).sum())} px" in text and "50.0% of the slice" in text, text
