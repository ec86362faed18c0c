"""Every output array of 25 held-out shapes-world scenes (three presets) and a batched call, saved
to one .npz: run it on two revisions and compare, to show a refactor changed no result.

    PYTHONPATH=/path/to/old/src python tools/dump_outputs.py before.npz
    PYTHONPATH=src python tools/dump_outputs.py after.npz
    python tools/dump_outputs.py --compare before.npz after.npz
"""
import sys
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

out = {}
checkpoint = Path(__file__).resolve().parents[1] / "benchmarks" / "shapes_world" / "checkpoint"
seg = EditSegmenter.from_pretrained(str(checkpoint), device="cpu")
PRESETS = {"defaults": {}, "paper": PAPER, "fused": {"prior_source": "fused", "relevance_from": "noise"}}
for preset_name, preset in PRESETS.items():
    for k, s in enumerate(held_out(25)):
        seg.set_image(s.image)
        r = seg.segment(s.expression, **preset)
        for f in ("mask", "scores", "prior", "features", "prior_work"):
            out[f"{preset_name}/{k}/{f}"] = getattr(r, f)
        out[f"{preset_name}/{k}/confidence"] = np.float64(r.confidence)
    batched = seg.segment_images([s.image for s in held_out(6)], [[s.expression] for s in held_out(6)], **preset)
    for k, rs in enumerate(batched):
        out[f"{preset_name}/batch{k}/scores"] = rs[0].scores
np.savez(sys.argv[1], **out)
print(len(out), "arrays")
