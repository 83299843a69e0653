"""Process-wide runtime settings every entry point and worker shares: the torch thread count and progress bars.

`configure_threads` picks one thread count for this process and its children. torch defaults to every core,
which collapses when the machine is shared: with as many threads as cores, one other busy process makes each
parallel region wait for a descheduled thread. The automatic choice is therefore half the cores.

`progress` is a tqdm bar in a terminal and a few log lines elsewhere: a bar redrawn with carriage returns turns
a log file or a captured stderr into one unreadable line per step.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator

log = logging.getLogger("deeprec")
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_set_here: set[str] = set()  # environment variables written by configure_threads, not by the user


def _user_threads() -> int | None:
    """The thread count the user asked for with OMP_NUM_THREADS, if any (not one configure_threads wrote)."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    if "OMP_NUM_THREADS" in _set_here or not value.isdigit() or int(value) < 1:
        return None
    return int(value)


def configure_threads(threads: int | None) -> int:
    """Set the torch thread count of this process (and, through the environment, of the processes it starts).

    `threads` None or 0 is automatic: the user's OMP_NUM_THREADS if set, else half the cores (at least one).
    OMP_NUM_THREADS and MKL_NUM_THREADS are written unless the user set them, TOKENIZERS_PARALLELISM=false unless
    set (tokenizers' own thread pool would compete with torch's). Returns the thread count; calling it again with
    the same argument changes nothing."""
    import torch

    n = threads or _user_threads() or max(1, (os.cpu_count() or 1) // 2)
    for name in _THREAD_VARIABLES:
        if name not in os.environ or name in _set_here:
            os.environ[name] = str(n)
            _set_here.add(name)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(n)
    return n


def quiet_library_progress() -> None:
    """Outside a terminal, silence the progress bars of the Hugging Face libraries (model loading, datasets), which
    would write carriage-return lines into a log."""
    if sys.stderr.isatty():
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:  # the environment alone does not need transformers' bars silenced
        return
    transformers_logging.disable_progress_bar()


class LogProgress:
    """tqdm's small interface (iteration, `update`, `set_postfix`, `close`, context manager) as log lines on the
    "deeprec" logger: one each time another tenth of `total` is done and one at the end with the elapsed time,
    so a bar adds at most about ten lines to a log. A tenth's line waits for the `set_postfix` that usually
    follows the update (or for the next update), so that it shows the values of that moment. With `disable`, it
    only counts."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "", disable=False):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.disable = iterable, total, desc, disable
        self.n, self.postfix, self._started, self._closed = 0, "", time.perf_counter(), False
        self._logged_tenths, self._due = 0, False

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self._log_due()
        self.n += n
        if self.disable or not self.total or self.n >= self.total:
            return
        tenths = 10 * self.n // self.total
        if tenths > self._logged_tenths:
            self._logged_tenths, self._due = tenths, True

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())
        self._log_due()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.disable:
            done = f"{self.n}/{self.total}" if self.total else str(self.n)
            self._log(f"{done} in {time.perf_counter() - self._started:.1f}s")

    def _log_due(self) -> None:
        if self._due:
            self._due = False
            self._log(f"{self.n}/{self.total} ({100 * self.n // self.total}%)")

    def _log(self, message: str) -> None:
        log.info("%s: %s%s", self.desc or "progress", message, f" ({self.postfix})" if self.postfix else "")


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", disable: bool = False):
    """A progress bar over `iterable` (or updated by hand up to `total`): tqdm when stderr is a terminal, else
    `LogProgress`; `disable` shows nothing."""
    if not disable and sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc)
    return LogProgress(iterable, total, desc, disable)
