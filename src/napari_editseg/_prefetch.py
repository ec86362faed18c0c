"""Runs over many images in chunks: the next chunk is read in background threads while the
model works on this one, and each chunk goes through one batched call where it can."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Sequence, TypeVar

Item = TypeVar("Item")


def chunked(items: Sequence[Item], size: int) -> list[list[Item]]:
    """``items`` in consecutive chunks of ``size`` (the last one shorter)."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"batch size must be a positive whole number, not {size!r}")
    return [list(items[k:k + size]) for k in range(0, len(items), size)]


def prefetched(chunks: list[list[Item]], load: Callable[[Item], Any], workers: int = 2
               ) -> Iterator[tuple[list[Item], list[Any]]]:
    """Each chunk with what ``load`` gave for each of its items — or the exception it raised,
    in its place. The next chunk is loaded in ``workers`` threads while the caller works on the
    current one (image decoding releases the GIL, so this overlaps with the model)."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="editseg-load") as pool:
        def start(chunk):
            return [pool.submit(load, item) for item in chunk]

        upcoming = start(chunks[0]) if chunks else []
        for n, chunk in enumerate(chunks):
            loading, upcoming = upcoming, (start(chunks[n + 1]) if n + 1 < len(chunks) else [])
            yield chunk, [future.exception() or future.result() for future in loading]


def segment_chunk(segmenter: Any, images: Sequence[Any], expressions: Sequence[Sequence[str]],
                  errors: tuple = (ValueError,), **settings: Any) -> list:
    """Each image's segmentations, or the error (one of ``errors``) it raised in their place.

    Several images go through one ``segment_images`` call; when that fails (one image the model
    refuses fails the whole batch), each image runs alone, so a bad image fails alone.
    """
    if len(images) > 1:
        try:
            return segmenter.segment_images(images, expressions, **settings)
        except errors:
            pass
    results = []
    for image, texts in zip(images, expressions):
        try:
            segmenter.set_image(image)
            results.append(segmenter.segment_batch(texts, **settings))
        except errors as error:
            results.append(error)
    return results
