"""One pinned slice per family on its tiny model (diffusers' ``expected_slice``): the whole forward's
noise prediction, the first feature block and the first captured image→text map, so that a silent
numeric change to a family's encoding, noise, conditioning or capture fails here. The values were
read on torch 2.13.0 (CPU) from the builders in :mod:`napari_editseg.testing`; a change to a
builder or to diffusers' initialisation moves them too (then check the parity tests and re-read)."""

import numpy as np
import pytest
import torch

from napari_editseg import EditSegmenter

# fixture: (settings, noise_pred[0, 0, :3, :3], features[0][0, :3, :3], cross[0][:3, first expression token])
EXPECTED = {
    "tiny_model_dir": ({}, [[0.0608, 0.2033, 0.2570], [0.3033, 0.3562, 0.2878], [0.0981, 0.1645, -0.0095]],
                       [[-0.0629, -0.0292, 0.0398], [-0.1714, -0.0952, 0.0131], [-0.2209, -0.4016, -0.3625]],
                       [0.01434, 0.01340, 0.01326]),
    "tiny_sdxl_dir": ({}, [[0.0003, -0.1280, -0.1324], [-0.2641, -0.5153, -0.1934], [0.1014, -0.4550, -0.2132]],
                      [[-0.2855, -0.0936, -0.1840], [-0.1072, 0.1922, 0.1813], [0.0264, 0.2275, 0.0985]],
                      [0.01260, 0.01382, 0.01374]),
    "tiny_cosxl_dir": ({}, [[-0.3073, -0.0510, -0.0968], [-0.3743, -0.3611, -0.3718], [-0.3423, -0.5748, -0.6598]],
                       [[-0.0993, -0.0400, -0.0665], [-0.3568, -0.2845, -0.4315], [-0.1410, -0.1349, -0.2100]],
                       [0.01272, 0.01375, 0.01181]),
    "tiny_flux_dir": ({"resolution": 64},
                      [[-0.7006, -0.0850, -0.9422], [-1.1775, 0.3951, -0.6019], [0.2490, 1.9588, 0.1739]],
                      [[-0.0791, -0.0243, -0.0441], [-0.1042, -0.1152, -0.1873], [-0.2083, -0.1388, -0.1848]],
                      [0.00197, 0.00161, 0.00171]),
}


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_each_family_gives_its_pinned_slice(request, family, picture):
    settings, noise, features, cross = EXPECTED[family]
    segmenter = EditSegmenter.from_pretrained(str(request.getfixturevalue(family)), device="cpu", **settings)
    segmenter.set_image(picture)
    forward = segmenter.forward(["the red disc"], early_exit=False, prior_source="attention")
    maps = forward.maps(0)
    torch.testing.assert_close(forward.noise_pred[0, 0, :3, :3], torch.tensor(noise), atol=2e-4, rtol=0)
    torch.testing.assert_close(maps.features[0][0, :3, :3], torch.tensor(features), atol=2e-4, rtol=0)
    np.testing.assert_allclose(maps.cross[0][:3, maps.instruction.token_positions[0]].numpy(), cross, atol=2e-5)
