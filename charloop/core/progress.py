"""Progress bars for long library work (tqdm; silent when not attached to a terminal)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_bar(items: Iterable[T], desc: str, unit: str = "it") -> Iterator[T]:
    """Iterate ``items`` with a progress bar named ``desc``."""
    yield from tqdm(items, desc=desc, unit=unit, disable=None, leave=False, dynamic_ncols=True)
