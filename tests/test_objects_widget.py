"""The dock's objects panel (issue 25) in a real napari viewer: one label per object in one undo step,
exemplar runs that never change a painted label, and segment-everything."""

import os
import sys

import numpy as np
import pytest

if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
    pytest.skip("no X display: run the suite with tools/run-tests (it uses Xvfb)", allow_module_level=True)

from napari_editseg._objects import EVERYTHING, LIKE, WORDS, paint_instances  # noqa: E402
from napari_editseg._widget import EditSegWidget  # noqa: E402


@pytest.fixture()
def dock(make_napari_viewer, segmenter, tiny_model_dir, picture):
    viewer = make_napari_viewer(show=False)
    widget = EditSegWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.use_model(str(tiny_model_dir))
    widget.device.value = "cpu"
    widget.session.add_model(widget._key(), segmenter)
    viewer.add_image(picture, name="pic")
    widget.settings["mask_threshold"].value = 0.0  # random weights: let every part through
    return viewer, widget


def find(qtbot, widget, mode, ids=""):
    widget.objects.panel.objects_mode.value = mode
    widget.objects.panel.exemplar_ids.value = ids
    widget.objects.find()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    return widget.status.value.replace("\u200b", "")


def painted_layer(viewer, shape):
    data = np.zeros(shape, np.uint32)
    data[5:15, 5:15], data[25:35, 40:50], data[5:12, 45:58] = 4, 9, 7
    return viewer.add_labels(data, name="painted")


@pytest.mark.parametrize("mode", [WORDS, EVERYTHING])
def test_each_object_is_its_own_label_in_one_undo_step(dock, qtbot, mode):
    viewer, widget = dock
    widget.expression.value = "the disc"
    text = find(qtbot, widget, mode)
    labels = viewer.layers["editseg pic"]
    ids = sorted(set(np.unique(labels.data)) - {0})
    assert ids == list(range(1, len(ids) + 1)) and len(ids) >= 1
    assert f"{len(ids)} object(s) found" in text
    labels.undo()  # one step takes every object back
    assert not labels.data.any()


def test_exemplars_never_change_a_painted_label_and_undo_restores_the_layer(dock, qtbot):
    viewer, widget = dock
    layer = painted_layer(viewer, (45, 60))
    before = layer.data.copy()
    widget.objects.panel.exemplar_layer.value = "painted"
    widget.objects.panel.exemplar_size.value = 0  # any size: the random tiny model's objects are not the exemplars'
    text = find(qtbot, widget, LIKE, "4, 9")
    after = layer.data
    assert np.array_equal(after[before > 0], before[before > 0])  # no painted pixel changed
    new = set(np.unique(after[before == 0])) - {0}
    assert new and min(new) == 10 and "object(s) found" in text  # fresh ids above the highest
    layer.undo()
    assert np.array_equal(layer.data, before)


def test_the_alike_by_size_and_colour_choices_reach_the_run(dock, qtbot, monkeypatch):
    viewer, widget = dock
    painted_layer(viewer, (45, 60))
    widget.objects.panel.exemplar_layer.value = "painted"
    segmenter = widget.session.segmenters[widget._key()]
    seen = []
    real = segmenter.segment_like
    names = ("exemplar_cue", "exemplar_size", "exemplar_colour", "exemplar_regions", "exemplar_granularity",
             "granularity")
    monkeypatch.setattr(segmenter, "segment_like",
                        lambda *a, **k: seen.append(tuple(k[n] for n in names)) or real(*a, **k))
    chosen = [("colour", 0.0, False, False, 0, 8), ("both", 3.0, True, True, 12, 20)]
    for values in chosen:
        for name, value in zip(names, values):
            getattr(widget.objects.panel, name).value = value
        find(qtbot, widget, LIKE, "4, 9")
    assert seen == chosen


def test_region_kinds_reach_segment_everything(dock, qtbot, monkeypatch):
    viewer, widget = dock
    segmenter = widget.session.segmenters[widget._key()]
    seen, real = [], segmenter.segment_everything
    monkeypatch.setattr(segmenter, "segment_everything", lambda **k: seen.append(k["granularity"]) or real(**k))
    widget.objects.panel.granularity.value = 5
    find(qtbot, widget, EVERYTHING)
    assert seen == [5]


def test_an_exemplar_run_that_finds_nothing_names_the_rules_to_loosen(dock, qtbot):
    viewer, widget = dock
    layer = painted_layer(viewer, (45, 60))
    before = layer.data.copy()
    widget.objects.panel.exemplar_layer.value = "painted"
    widget.objects.panel.exemplar_size.value = 1.0  # exactly the exemplars' sizes: nothing here is
    text = find(qtbot, widget, LIKE, "4, 9")
    assert "No object found" in text and "widen 'size within ×'" in text and "untick 'only their colour'" in text
    widget.objects.panel.exemplar_colour.value = False
    text = find(qtbot, widget, LIKE, "4, 9")
    assert "No object found" in text and "untick" not in text
    assert np.array_equal(layer.data, before)


def test_bad_exemplar_input_says_so_and_paints_nothing(dock, qtbot):
    viewer, widget = dock
    painted_layer(viewer, (45, 60))
    widget.objects.panel.exemplar_layer.value = "painted"
    for ids, message in (("", "label ids"), ("3", "not painted"), ("x", "whole numbers")):
        assert message in find(qtbot, widget, LIKE, ids)
    widget.expression.value = ""
    assert "Type what to find" in find(qtbot, widget, WORDS)
    assert "editseg pic" not in viewer.layers


def test_paint_instances_skips_painted_pixels(make_napari_viewer):
    viewer = make_napari_viewer(show=False)
    layer = viewer.add_labels(np.zeros((2, 6, 6), np.uint16))
    layer.data[1, 0, 0] = 5
    instances = np.zeros((6, 6), np.int32)
    instances[:2, :2], instances[4:, 4:] = 1, 2
    assert paint_instances(layer, (1,), instances) == [6, 7]
    assert layer.data[1, 0, 0] == 5 and (layer.data[1, 4:, 4:] == 7).all() and not layer.data[0].any()
