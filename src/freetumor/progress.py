"""Progress on stderr, the same way for every command that can run for more than a few seconds.

Two kinds, both on stderr (stdout keeps the commands' results) and both off with ``--quiet``:

* :func:`bar`: a tqdm bar over cases or steps (``synthesize-batch``, ``predict``, ``train-seg``, ...);
* :class:`Progress`: one line per phase of a command (``[2/3] placing 2 tumour(s) ...``) with the
  time since the command started, and a heartbeat line when a phase has been silent for
  ``every`` seconds (30 by default), so a long step never looks like a hang.

Example:
    >>> import io
    >>> buf = io.StringIO()
    >>> with Progress(stream=buf, clock=iter(range(100)).__next__) as p:
    ...     p("reading")
    ...     p("writing")
    >>> print(buf.getvalue(), end="")
    [1 s] reading ...
    [2 s] writing ...
    [3 s] done
"""

from __future__ import annotations

import re
import sys
import threading
import time
from typing import Callable, Iterable, TextIO

HEARTBEAT_S = 30.0


PROGRESS_LINE = re.compile(r"^\[\d+ s\] ")  # what :class:`Progress` writes: "[12 s] phase ..."


def without_progress(stderr: str) -> list[str]:
    """The lines of a command's stderr that are not progress lines (its error line, warnings).

    >>> without_progress("[0 s] reading ct.nii.gz ...\\nerror: ct.nii.gz: not a NIfTI\\n")
    ['error: ct.nii.gz: not a NIfTI']
    """
    return [ln for ln in stderr.strip().splitlines() if ln and not PROGRESS_LINE.match(ln)]


def bar(iterable: Iterable | None = None, *, desc: str, enabled: bool = True, unit: str = "it", **kw):
    """A tqdm bar on stderr (``disable`` when not ``enabled``)."""
    from tqdm import tqdm  # deferred: tqdm only where a bar is drawn

    return tqdm(iterable, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr, disable=not enabled, **kw)


class Progress:
    """Phase lines on stderr with the elapsed time, and a heartbeat while a phase runs.

    Call it with a phase's text to start that phase; ``close()`` (or leaving the ``with``
    block) prints ``done`` with the total time (when a phase was announced) and stops the
    heartbeat. A disabled instance (``--quiet``) prints nothing and starts no thread.
    ``total`` numbers the phases ``[k/total]``.
    """

    def __init__(self, enabled: bool = True, *, every: float = HEARTBEAT_S, stream: TextIO | None = None,
                 total: int | None = None, clock: Callable[[], float] = time.monotonic,
                 done: str | None = "done") -> None:
        self.enabled = enabled
        self.every = every
        self.stream = stream
        self.total = total
        self.clock = clock
        self.done_text = done
        self.start = clock()
        self.count = 0
        self.phase = ""
        self._last = self.start
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self, text: str) -> None:
        """``[<seconds since start> s] text`` on the stream; restarts the heartbeat's clock."""
        stream = self.stream if self.stream is not None else sys.stderr
        with self._lock:
            now = self.clock()
            line = f"[{now - self.start:.0f} s] {text}"
            tq = sys.modules.get("tqdm")
            if tq is not None and stream is sys.stderr:
                tq.tqdm.write(line, file=stream)  # above a running bar, not through it
            else:
                stream.write(line + "\n")
            stream.flush()
            self._last = now

    def __call__(self, text: str) -> None:
        """Start the phase ``text``: one line now, heartbeats while it runs."""
        if not self.enabled:
            return
        self.count += 1
        self.phase = text
        k = f"[{self.count}/{self.total}] " if self.total else ""
        self._write(f"{k}{text} ...")
        if self._thread is None and self.every > 0:
            self._thread = threading.Thread(target=self._beat, name="freetumor-progress", daemon=True)
            self._thread.start()

    def log(self, text: str) -> None:
        """A line within the current phase (also restarts the heartbeat's clock)."""
        if self.enabled:
            self._write(f"  {text}")

    def _beat(self) -> None:
        while not self._stop.wait(min(self.every, 5.0)):
            if self.clock() - self._last >= self.every:
                self._write(f"  ... still {self.phase}")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.enabled and self.count and self.done_text:
            self._write(self.done_text)
            self.count = 0

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:
            self.done_text = None  # an error line follows; no "done"
        self.close()
