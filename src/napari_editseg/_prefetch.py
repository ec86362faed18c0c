"""Read the next chunk of inputs in background threads while the model works on this one."""

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
