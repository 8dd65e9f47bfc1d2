"""A rich progress bar on stderr for long work; silent when stderr is not a terminal or with --quiet."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

MIN_BYTES = 256 << 20  # about a second of work


@contextlib.contextmanager
def progress_bar(total_bytes: int, total_tensors: int, quiet: bool, label: str = "reading"
                 ) -> Iterator[Callable[[int, int], None] | None]:
    if quiet or total_bytes < MIN_BYTES or not sys.stderr.isatty():
        yield None
        return
    import time

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    # binary units, as every size wdist prints (human_bytes): one file never shows as "1.1 GB" and "1.0 GiB"
    # auto_refresh=False: no refresh thread, so worker processes can be forked safely
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                  TextColumn("{task.fields[tensors]}"), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True, auto_refresh=False) as p:
        task = p.add_task(label, total=total_bytes, tensors="")
        last = [0.0]

        def update(done: int, tensors: int) -> None:
            p.update(task, completed=done, tensors=f"{tensors}/{total_tensors} tensors")
            now = time.monotonic()
            if now - last[0] > 0.1 or done >= total_bytes:
                last[0] = now
                p.refresh()

        yield update
