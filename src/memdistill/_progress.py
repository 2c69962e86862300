"""Progress display that suits where the output goes.

On a terminal a redrawing tqdm bar. Off a terminal (a batch job, ``> log``) a redrawing
bar would write hundreds of carriage-return frames into the file, so there a compact line
such as ``distill: 12/40 it, 30 s, loss=0.123`` is printed at most every ``interval``
seconds, plus one final line at :meth:`close`. Disabled, nothing is printed.

Only ``update`` and ``close`` print a line, so set the postfix before the update whose
line should carry it::

    with progress_bar(total=steps, desc="distill", enabled=show) as bar:
        for _ in range(steps):
            ...
            bar.set_postfix(loss=f"{loss:.3f}")
            bar.update(1)
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Protocol, TextIO

__all__ = ["Progress", "progress_bar", "DEFAULT_INTERVAL_S"]

DEFAULT_INTERVAL_S = 30.0


class Progress(Protocol):
    """What every progress display offers (a tqdm bar has these too)."""

    def update(self, n: int = 1) -> object: ...

    def set_postfix(self, **values: object) -> object: ...

    def close(self) -> object: ...

    def __enter__(self) -> Progress: ...

    def __exit__(self, *exc: object) -> object: ...


class _Silent:
    """Disabled progress: every call does nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values: object) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _show(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class _Lines:
    """Progress off a terminal: one line at most every ``interval`` seconds, one at close."""

    def __init__(self, total: int | None, desc: str, unit: str, initial: int, stream: TextIO,
                 interval: float, clock: Callable[[], float]):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.stream, self.interval, self.clock = stream, interval, clock
        self.start = self.last = clock()
        self.postfix: dict[str, object] = {}
        self.closed = False

    def line(self) -> str:
        """The progress so far, e.g. ``distill: 12/40 it, 30 s, loss=0.123``."""
        count = f"{self.n}" if self.total is None else f"{self.n}/{self.total}"
        parts = [f"{count} {self.unit}", f"{self.clock() - self.start:.0f} s"]
        parts += [f"{k}={_show(v)}" for k, v in self.postfix.items()]
        return f"{self.desc}: {', '.join(parts)}" if self.desc else ", ".join(parts)

    def _print(self) -> None:
        self.stream.write(self.line() + "\n")
        self.stream.flush()
        self.last = self.clock()

    def _maybe_print(self) -> None:
        if not self.closed and self.clock() - self.last >= self.interval:
            self._print()

    def update(self, n: int = 1) -> None:
        self.n += n
        self._maybe_print()

    def set_postfix(self, **values: object) -> None:
        self.postfix = dict(values)  # shown by the next line: only update() and close() print

    def close(self) -> None:
        if not self.closed:
            self._print()
            self.closed = True

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(
    total: int | None,
    desc: str = "",
    unit: str = "it",
    *,
    enabled: bool = True,
    initial: int = 0,
    leave: bool = True,
    stream: TextIO | None = None,
    interval: float = DEFAULT_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
) -> Progress:
    """A progress display of ``total`` steps (``None``: unknown) named ``desc``.

    Args:
        enabled: ``False`` gives a display that prints nothing (``--no-progress``).
        initial: steps already done (a resumed run).
        leave: on a terminal, keep the finished bar on screen (off a terminal the final
            line is always printed).
        stream: where to write (default: ``sys.stderr`` at the time of the call). On a
            terminal (``stream.isatty()``) a tqdm bar, else compact lines.
        interval: off a terminal, the least seconds between two progress lines.
        clock: seconds, monotonic; injected by tests.

    Returns:
        An object with ``update(n=1)``, ``set_postfix(**values)``, ``close()``, usable as a
        context manager (which closes it).
    """
    if not enabled:
        return _Silent()
    stream = sys.stderr if stream is None else stream
    if _is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=stream)
    return _Lines(total, desc, unit, initial, stream, float(interval), clock)
