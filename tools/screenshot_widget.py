"""Screenshot of the dock widget in a real napari window, for docs/plugin.md.

Run under a display (``xvfb-run -a -s "-screen 0 1400x900x24" python tools/screenshot_widget.py MODEL
[OUT] [EXPRESSION] [SAMPLE]``). MODEL is a diffusers folder; SAMPLE one of the plugin's sample
pictures (astronaut, coffee, chelsea, shapes).
"""

import sys
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_editseg import _sample_data
from napari_editseg._widget import EditSegWidget


def main(model: str, out: str = "docs/images/widget.png", expression: str = "the woman's face",
         sample: str = "astronaut") -> None:
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 860)
    data, meta, _ = getattr(_sample_data, sample)()[0]
    viewer.add_image(data, **meta)
    widget = EditSegWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment by words")
    widget.model.value = model
    widget.device.value = "cpu"
    widget.show_prior.value = True
    widget.expression.value = expression
    widget.segment()
    app = QApplication.instance()
    start = time.time()
    while widget._worker is not None and time.time() - start < 600:
        app.processEvents()
        time.sleep(0.05)
    viewer.layers["editseg prior"].visible = False
    for child in widget.children():
        if hasattr(child, "expand"):
            child.expand(animate=False)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(out, canvas_only=False)
    print(f"wrote {out}: {widget.status.value}")
    viewer.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
