"""Building many small objects at once: the cycle collector paused while mapping or judging thousands of deals."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cycle collector while building (or judging) many acyclic objects.

    Mapping 100,000 deals allocates millions of small objects; the collector rescans them again and
    again and takes ~60% of the time. Raw records, Deals and Violations form no reference cycles.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()
