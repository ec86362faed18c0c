"""Every output array of 25 held-out shapes-world scenes (three presets) and a batched call, and of
the tiny random-weight InstructPix2Pix, SDXL InstructPix2Pix, CosXL Edit and FLUX.1 Kontext models
(every public call: segment, a batch, a box, points, refine, several images, the whole forward),
saved to one .npz: run it on two revisions and compare, to show a refactor changed no result.

    PYTHONPATH=/path/to/old/src python tools/dump_outputs.py before.npz
    PYTHONPATH=src python tools/dump_outputs.py after.npz
    python tools/dump_outputs.py --compare before.npz after.npz

The tiny models come from ``napari_editseg.testing`` (or, on revisions before it existed, from
the builders in tests/), so both revisions run the same weights.
"""
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

if sys.argv[1] == "--compare":
    a, b = np.load(sys.argv[2]), np.load(sys.argv[3])
    differing = [k for k in a.files if k not in b.files or not np.array_equal(a[k], b[k])]
    print(f"{len(a.files)} arrays compared; {len(differing)} differ {differing[:5]}")
    sys.exit(bool(differing) or sorted(a.files) != sorted(b.files))

torch.set_num_threads(1)  # float sums depend on the thread count
from napari_editseg import PAPER, EditSegmenter  # noqa: E402
from napari_editseg.shapes_world import held_out  # noqa: E402

try:
    from napari_editseg.testing import build_tiny_flux_kontext, build_tiny_pipeline, save_tiny_sdxl, tiny_picture
except ImportError:  # a revision from before napari_editseg.testing: the builders sat in tests/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import build_tiny_pipeline  # noqa: E402
    from tiny_flux import build_tiny_flux_kontext  # noqa: E402
    from tiny_sdxl import save_tiny_sdxl  # noqa: E402

    def tiny_picture() -> np.ndarray:
        rng = np.random.default_rng(0)
        image = rng.integers(60, 120, size=(45, 60, 3)).astype(np.uint8)
        rows, cols = np.mgrid[:45, :60]
        image[(rows - 20) ** 2 + (cols - 18) ** 2 < 100] = (230, 40, 40)
        image[10:30, 38:54] = (20, 20, 200)
        return image

FIELDS = ("mask", "scores", "prior", "features", "prior_work", "fg_prototypes", "bg_prototypes")
PRESETS = {"defaults": {}, "paper": PAPER, "fused": {"prior_source": "fused", "relevance_from": "noise"}}
out = {}


def keep(prefix: str, result, fields=FIELDS) -> None:
    for f in fields:
        out[f"{prefix}/{f}"] = getattr(result, f)
    out[f"{prefix}/confidence"] = np.float64(result.confidence)


checkpoint = Path(__file__).resolve().parents[1] / "benchmarks" / "shapes_world" / "checkpoint"
seg = EditSegmenter.from_pretrained(str(checkpoint), device="cpu")
for preset_name, preset in PRESETS.items():
    for k, s in enumerate(held_out(25)):
        seg.set_image(s.image)
        keep(f"{preset_name}/{k}", seg.segment(s.expression, **preset), FIELDS[:5])
    batched = seg.segment_images([s.image for s in held_out(6)], [[s.expression] for s in held_out(6)], **preset)
    for k, rs in enumerate(batched):
        out[f"{preset_name}/batch{k}/scores"] = rs[0].scores


def tiny(family: str, folder: str, words: tuple[str, str]) -> None:
    """Every public call on one tiny model and the picture the tests use."""
    seg = EditSegmenter.from_pretrained(folder, device="cpu")
    picture = tiny_picture()
    seg.set_image(picture)
    for preset_name, preset in PRESETS.items():
        keep(f"tiny/{family}/{preset_name}", seg.segment(words[0], **preset))
    for k, r in enumerate(seg.segment_batch(list(words), noise_samples=2)):
        keep(f"tiny/{family}/batch{k}", r)
    boxed = seg.segment(words[1], box=(5, 30, 35, 58))
    keep(f"tiny/{family}/box", boxed)
    keep(f"tiny/{family}/refine", seg.refine(boxed, positive=[(20, 45)], negative=[(5, 5)], mask_threshold=0.4))
    keep(f"tiny/{family}/points", seg.segment_points(positive=[(20, 18)], negative=[(40, 55)]))
    images = seg.segment_images([picture, picture[:, ::-1].copy()], [[words[0]], list(words)], prior_source="fused")
    for j, results in enumerate(images):
        for k, r in enumerate(results):
            keep(f"tiny/{family}/images{j}/{k}", r)
    seg.set_image(picture)  # the forward runs the relevance baseline row again (no cached copy): same batch as before
    whole = seg.forward([words[0]], early_exit=False)
    out[f"tiny/{family}/noise_pred"] = whole.noise_pred.float().numpy()


with tempfile.TemporaryDirectory() as root:
    build_tiny_pipeline().save_pretrained(f"{root}/ip2p")
    tiny("instruct-pix2pix", f"{root}/ip2p", ("the red disc", "the blue square"))
    save_tiny_sdxl(Path(f"{root}/sdxl"))
    tiny("sdxl", f"{root}/sdxl", ("the red disc", "the blue square"))
    save_tiny_sdxl(Path(f"{root}/cosxl"), cosxl=True, seed=1)
    tiny("cosxl", f"{root}/cosxl", ("the red disc", "the blue square"))
    build_tiny_flux_kontext().save_pretrained(f"{root}/flux")
    tiny("flux-kontext", f"{root}/flux", ("the red disc", "the blue square"))
np.savez(sys.argv[1], **out)
print(len(out), "arrays")
