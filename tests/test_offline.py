"""Issue 23: no internet. The hub client's own exceptions, raised by its own code path (the hub
endpoint pointed at a closed local port, so every request is refused for real), must end in one
line after one ask, in the widget's run state as on the command line; the shipped demo model
works with no hub at all."""

import socket
import time

import numpy as np
import pytest
from huggingface_hub import HfApi, constants

from napari_editseg.core.model import DEMO_MODEL, ModelNotAvailableError, hub_unreachable

MISSING = "editseg-tests/not-on-this-computer"


@pytest.fixture()
def closed_hub(monkeypatch, tmp_path):
    """The hub at a local port nobody listens on, online mode, an empty cache; counts the hub asks."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again when the block ends: connections are refused
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    asks = []
    real = HfApi.model_info

    def counted(self, *args, **kwargs):
        asks.append(kwargs.get("timeout"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(HfApi, "model_info", counted)
    return asks


def test_the_hub_clients_no_connection_error_is_recognised(closed_hub):
    with pytest.raises(Exception) as caught:
        HfApi().model_info(MISSING, timeout=2)
    error = caught.value
    assert hub_unreachable(error), f"{type(error).__module__}.{type(error).__name__} not recognised"
    assert not hub_unreachable(ValueError("not a network error"))


def test_the_widget_state_says_one_line_after_one_ask(closed_hub):
    from napari_editseg._runstate import Session
    from napari_editseg._workers import message

    start = time.perf_counter()
    with pytest.raises(ModelNotAvailableError) as caught:
        Session().load(MISSING, "cpu")
    assert time.perf_counter() - start < 15
    assert len(closed_hub) == 1 and closed_hub[0] <= 10  # asked once, with a short timeout
    text = message(caught.value, MISSING)
    assert "is not on this computer" in text and "Errno" not in text and "\n" not in text
    assert "Shapes demo" in text  # the one model that works offline is suggested


def test_the_command_line_asks_once_then_says_one_line(closed_hub, capfd, tmp_path):
    from napari_editseg.cli import main

    start = time.perf_counter()
    code = main(["segment", "--sample", "shapes", "red circle", "--model", MISSING, "-o", str(tmp_path / "m.png")])
    took = time.perf_counter() - start
    err = capfd.readouterr().err
    assert code == 3 and took < 15, (code, took)
    assert len(closed_hub) == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "could not be reached" in lines[0] and DEMO_MODEL in lines[0], err
    assert "Retrying" not in err and "Traceback" not in err


def test_the_demo_model_runs_with_no_hub_and_says_how_to_get_the_real_one(closed_hub, capfd, tmp_path):
    from skimage import io

    from napari_editseg.cli import main

    code = main(["segment", "--sample", "shapes", "red circle", "--model", DEMO_MODEL, "-o", str(tmp_path / "m.png"),
                 "--overlay", str(tmp_path / "o.png")])
    out = capfd.readouterr().out
    assert code == 0 and closed_hub == []  # the demo never asks the hub
    mask = io.imread(tmp_path / "m.png")
    assert set(np.unique(mask)) == {0, 255}
    assert "timbrooks/instruct-pix2pix" in out and "hf download" in out
