"""The disk cache of image latents (core/latent_cache.py): a reopened image or tile runs no VAE pass."""

import threading

import numpy as np
import torch

from napari_editseg import EditSegmenter
from napari_editseg.core.latent_cache import LatentCache, cache_folder, model_identity
from napari_editseg.core.tiling import segment_tiled


def fresh(folder, model_dir) -> EditSegmenter:
    """A new segmenter (as after a restart) whose latents go to ``folder``."""
    segmenter = EditSegmenter.from_pretrained(str(model_dir), device="cpu")
    segmenter.latent_cache = LatentCache(folder)
    return segmenter


def test_reopening_a_cached_image_runs_no_vae_pass(tmp_path, tiny_model_dir, picture, count_calls):
    first = fresh(tmp_path, tiny_model_dir)
    with count_calls(first.model.pipe.vae.encoder) as vae:
        first.set_image(picture)
        expected = first.segment("the disc")
    assert vae.calls == 1 and len(first.latent_cache) == 1
    again = fresh(tmp_path, tiny_model_dir)
    with count_calls(again.model.pipe.vae.encoder) as vae:
        again.set_image(picture)
        result = again.segment("the disc")
    assert vae.calls == 0 and again.latent_cache.hits == 1
    np.testing.assert_array_equal(result.mask, expected.mask)
    other = picture.copy()
    other[0, 0] = 0  # another image: another key
    with count_calls(again.model.pipe.vae.encoder) as vae:
        again.set_image(other)
    assert vae.calls == 1


def test_reopening_a_tiled_image_runs_no_vae_pass(tmp_path, tiny_model_dir, picture, count_calls):
    image = np.tile(picture, (2, 2, 1))
    first = fresh(tmp_path, tiny_model_dir)
    with count_calls(first.model.pipe.vae.encoder) as vae:
        tiled = segment_tiled(first, image, "red disc", tiling="always")
    assert vae.calls == 1 + len(tiled.tiles)  # the overview and each tile
    again = fresh(tmp_path, tiny_model_dir)
    with count_calls(again.model.pipe.vae.encoder) as vae:
        segment_tiled(again, image, "red disc", tiling="always")
    assert vae.calls == 0


def test_the_key_holds_the_model(tmp_path, tiny_model_dir, tiny_two_level_dir, picture, count_calls):
    fresh(tmp_path, tiny_model_dir).set_image(picture)
    other = fresh(tmp_path, tiny_two_level_dir)
    assert model_identity(other.model) != model_identity(fresh(tmp_path, tiny_model_dir).model)
    with count_calls(other.model.pipe.vae.encoder) as vae:
        other.set_image(picture)
    assert vae.calls == 1


def test_the_cache_keeps_the_most_recent_within_its_size(tmp_path):
    cache = LatentCache(tmp_path, max_bytes=10_000)
    for i in range(8):
        cache.put(f"{i:02d}" + "0" * 62, torch.full((1, 4, 16, 16), float(i)))  # about 5 kB a file
    assert 0 < len(cache) < 8
    assert cache.get("07" + "0" * 62)[0, 0, 0, 0] == 7.0
    assert cache.get("00" + "0" * 62) is None


def test_two_writers_and_a_reader_never_see_half_a_file(tmp_path):
    cache, key, errors = LatentCache(tmp_path), "ab" * 32, []
    value = torch.arange(4 * 32 * 32, dtype=torch.float32).reshape(1, 4, 32, 32)

    def write():
        for _ in range(20):
            LatentCache(tmp_path).put(key, value)

    def read():
        for _ in range(60):
            got = cache.get(key)
            if got is not None and not torch.equal(got, value):
                errors.append("torn read")

    threads = [threading.Thread(target=f) for f in (write, write, read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and torch.equal(cache.get(key), value)
    assert not list(tmp_path.glob("*/*.tmp"))


def test_the_folder_is_the_platforms_unless_set(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_EDITSEG_CACHE", str(tmp_path))
    assert cache_folder() == tmp_path
    monkeypatch.delenv("NAPARI_EDITSEG_CACHE")
    assert "napari-editseg" in str(cache_folder())
