"""Progress of a sweep on stderr: a live table on a terminal, plain log lines otherwise.

Each job is `pending`, `running`, `done`, `failed` or `skipped` (up to date from an
earlier run). While a job trains, its epoch and loss come from the lines its worker
logs. `quiet` turns the view off.
"""

import logging
import re
import sys
import threading
import time
from typing import IO

logger = logging.getLogger(__name__)

STATES = ("pending", "running", "done", "failed", "skipped")
EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+): loss ([-+0-9.eE]+|nan|inf)")
STATE_STYLES = {"pending": "dim", "running": "cyan", "done": "green", "failed": "bold red", "skipped": "yellow"}


class SweepProgress:
    """Track the state, elapsed time, epoch and loss of every job of a sweep."""

    def __init__(self, labels: list[str], quiet: bool = False, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.live_view = not quiet and self.stream.isatty()
        self._lock = threading.Lock()
        self._jobs = {label: {"state": "pending", "started": None, "ended": None, "epoch": "", "loss": ""} for label in labels}
        self._live = None

    def __enter__(self) -> "SweepProgress":
        if self.live_view:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._table(), console=Console(file=self.stream), refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(*exc_info)
            self._live = None

    @property
    def relays_worker_output(self) -> bool:
        """Whether worker log lines should be copied to stderr (only without the live view)."""
        return not self.live_view and not self.quiet

    def set_state(self, label: str, state: str, detail: str = "") -> None:
        """Move job `label` to `state` and report it."""
        with self._lock:
            job = self._jobs[label]
            job["state"] = state
            now = time.monotonic()
            if state == "running":
                job["started"] = now
            elif state in ("done", "failed", "skipped"):
                job["ended"] = now
            counts = self._counts()
        if self._live is not None:
            self._live.update(self._table())
        elif not self.quiet:
            logger.info("[%s] %s%s (%s)", label, state, f": {detail}" if detail else "", counts)

    def worker_line(self, label: str, line: str) -> None:
        """Take one log line of the job's worker; epoch lines update the job's epoch and loss."""
        match = EPOCH_LINE.search(line)
        if not match:
            return
        with self._lock:
            job = self._jobs[label]
            job["epoch"] = f"{match.group(1)}/{match.group(2)}"
            job["loss"] = match.group(3)
        if self._live is not None:
            self._live.update(self._table())

    def _counts(self) -> str:
        totals = {state: 0 for state in STATES}
        for job in self._jobs.values():
            totals[job["state"]] += 1
        finished = totals["done"] + totals["failed"] + totals["skipped"]
        return f"{finished}/{len(self._jobs)} finished, " + ", ".join(
            f"{count} {state}" for state, count in totals.items() if count
        )

    def _table(self):
        from rich.table import Table

        with self._lock:
            table = Table(title=f"fly64 sweep: {self._counts()}", expand=False)
            for column in ("job", "state", "elapsed", "epoch", "loss"):
                table.add_column(column)
            now = time.monotonic()
            for label, job in self._jobs.items():
                elapsed = ""
                if job["started"] is not None:
                    elapsed = f"{(job['ended'] or now) - job['started']:.0f} s"
                state = job["state"]
                table.add_row(label, f"[{STATE_STYLES[state]}]{state}[/]", elapsed, job["epoch"], job["loss"])
        return table
