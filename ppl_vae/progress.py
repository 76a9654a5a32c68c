"""Progress while work runs: a bar on a terminal; when the output goes to a file or a pipe, no bar
(its carriage-return updates would fill the file), and the trainer prints one line per epoch."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def is_terminal() -> bool:
    """Whether progress bars would be seen: standard error is an interactive terminal."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def bar(total: int, desc: str, unit: str, show: bool = True, initial: int = 0, leave: bool = True) -> tqdm:
    """A tqdm bar, disabled unless ``show`` and standard error is a terminal."""
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not (show and is_terminal()), leave=leave)


def write(line: str) -> None:
    """One line of the run's log (standard output, beside the epoch lines), printed without breaking a bar."""
    tqdm.write(line)
