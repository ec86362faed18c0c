"""Screenshots of the dock's objects panel (issue 25) in a real napari window, for docs/plugin.md.

Run under a display::

    xvfb-run -a -s "-screen 0 1280x800x24" python tools/screenshot_objects.py [OUT_DIR]

On a held-out counting scene of the shapes world (``counting_scenes``, the first one) with the demo
model and default settings: ``objects-words.png`` (every object "green triangle" names, one label
each), ``objects-like.png`` (the first three green triangles painted as labels 1-3 in a "painted" layer, the
others found like it) and ``objects-everything.png`` (every region, no words).
"""

import sys
import time
from pathlib import Path

import napari
import numpy as np
from screenshot_widget import pump  # the tools folder is on the path when a tool runs

from napari_editseg import _objects
from napari_editseg._widget import EditSegWidget
from napari_editseg.core.names import DEMO_MODEL
from napari_editseg.shapes_world import counting_scenes

ROOT = Path(__file__).resolve().parents[1]


def find(widget, mode: str, path: Path) -> None:
    widget.objects.panel.objects_mode.value = mode
    widget.objects.find()
    start = time.time()
    while widget._worker is not None and time.time() - start < 600:
        pump(0.05)
    widget.viewer.reset_view()
    pump()
    widget.viewer.screenshot(str(path), canvas_only=False)
    print(f"wrote {path}: {widget.status.value}")


def main(out_dir: str = str(ROOT / "docs" / "images")) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scene = counting_scenes(1)[0]
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.setGeometry(0, 0, 1280, 800)
    viewer.add_image(scene.image, name="scene")
    widget = EditSegWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment by words")
    widget.use_model(DEMO_MODEL)
    widget.device.value = "cpu"
    widget.folds[_objects.TITLE].expand(animate=False)
    widget.expression.value = scene.expression
    find(widget, _objects.WORDS, out / "objects-words.png")
    del viewer.layers["editseg scene"]

    painted = np.zeros(scene.image.shape[:2], np.uint32)
    for k, mask in enumerate(scene.named_masks[:3], start=1):  # three exemplars, as the benchmark paints them
        painted[mask] = k
    viewer.add_labels(painted, name="painted", opacity=0.7)
    widget.objects.panel.exemplar_layer.value = "painted"
    widget.objects.panel.exemplar_ids.value = "1, 2, 3"
    widget.expression.value = ""
    find(widget, _objects.LIKE, out / "objects-like.png")
    del viewer.layers["painted"]

    find(widget, _objects.EVERYTHING, out / "objects-everything.png")
    viewer.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
