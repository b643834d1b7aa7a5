"""A progress bar for a backlog run in a notebook: one line, updated in place through IPython's
display updates, which Jupyter shows live and nbclient/papermill record into the executed
notebook; outside IPython it prints a line per change."""

from __future__ import annotations

from typing import Any

from fixfleet.backlog.runner import Progress, RunEvent


def bar(progress: Progress, width: int = 30) -> str:
    total = max(progress.to_run, 1)
    filled = round(width * progress.ended / total)
    return (f"[{'#' * filled}{'.' * (width - filled)}] {progress.ended}/{progress.to_run} ended · "
            f"{progress.in_flight} in flight · {progress.submitted} submitted, {progress.resumed} resumed · "
            f"${progress.spent_usd:.2f} spent, ${progress.committed_usd:.2f} committed")


class NotebookProgress:
    """`on_event=NotebookProgress()`: the bar, and below it the last thing that happened."""

    def __init__(self) -> None:
        self._handle: Any = None
        self.last = ""

    def __call__(self, event: RunEvent) -> None:
        self.last = f"{bar(event.progress)}\n{event.message}"
        if self._handle is None:
            self._handle = _display(self.last)
        elif self._handle is not False:
            self._handle.update(_text(self.last))
        if self._handle is False:
            print(self.last, flush=True)


def _display(text: str) -> Any:
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return False
    if get_ipython() is None:
        return False
    return display(_text(text), display_id=True)


def _text(text: str) -> Any:
    from IPython.display import Pretty

    return Pretty(text)
