"""What a job shows on the terminal, and where everything else goes.

The console shows the job's own lines: on a terminal, one progress bar per stage (steps, rows or models, with the
elapsed time and an estimate of the rest) that becomes a ticked line when the stage ends; without one (CI, `> log`),
one line per stage and one per finished run. Besides those, only the warnings that need the user (`NeedsTheUser`)
and the job's result. Everything else the process writes goes to `<log_dir>/<job>.log`: the Python logging of Ray,
Ray Data, Ray Train, DeepSpeed, MLflow and transformers, Python warnings, library progress bars and prints, and what
native code (Ray's core worker, compilers DeepSpeed starts) writes to the process's stdout and stderr, whose file
descriptors point at the log while the console is open. `verbose=True` changes nothing: every library writes to the
console as it would without maple. Ray's worker processes write to Ray's own session folder (`maple.runtime.init_ray`
with `quiet=True` keeps their output off the driver).

    with Console(out / "logs", "demo", verbose=False) as console:
        with console.stage("[2/6] training the baseline", total=150, unit="step") as stage:
            train(..., on_step=stage.advance)
            stage.finished("baseline: 150 steps in 48 s")
        console.line(table)
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from maple.section import SetupError

OUR_LOGGERS = ("maple", "jobs", "serve", "__main__")
# The libraries' messages that need the user: a task, actor or dataset operator asks for resources that no node of
# the cluster has, and the run would wait for them forever.
NEEDS_THE_USER = ("cannot be scheduled right now", "Cluster resources are not enough to run any task")
# Library loggers that do not propagate to the root logger (Ray's own handlers write to sys.stderr): the console's
# handler joins them so that their NEEDS_THE_USER messages reach it.
NON_PROPAGATING = ("ray", "ray.data")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class NeedsTheUser(logging.Filter):
    """Warnings and errors of maple's own loggers, and the libraries' records that contain a NEEDS_THE_USER text."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        if record.name.split(".")[0] in OUR_LOGGERS:
            return True
        message = record.getMessage()
        return any(text in message for text in NEEDS_THE_USER)


class _ConsoleHandler(logging.Handler):
    def __init__(self, console: Console):
        super().__init__(logging.WARNING)
        self.console = console
        self.addFilter(NeedsTheUser())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.line(f"{record.levelname.lower()}: {record.getMessage()}")
        except Exception:  # noqa: BLE001 (logging's own convention: a handler never raises)
            self.handleError(record)


class Stage:
    """One stage of a job on the console. On a terminal a tqdm bar counts `unit`s (with the elapsed time and, once
    the total is known, the time left) and, when the stage ends, gives way to a ticked line followed by the lines of
    its finished runs (`finished`; the bar shows the latest meanwhile). Otherwise the stage is one line when it
    starts and each finished run one line when it ends."""

    def __init__(self, console: Console, title: str, total: int | None, unit: str):
        self.console, self.title = console, title
        self.count = 0
        self.started = time.perf_counter()
        self.bar: tqdm | None = None
        self.runs: list[str] = []  # on a terminal: the finished runs' lines, written under the ticked line
        if console.tty:
            width = console.width()  # 0 where the terminal does not say (a pseudo-terminal without a size)
            self.bar = tqdm(total=total, desc=title, unit=f" {unit}", file=console.stream, leave=False,
                            dynamic_ncols=width > 0, ncols=None if width else 100, mininterval=0.5,
                            bar_format=None if total else "{desc}  {n_fmt}{unit} [{elapsed}]")
        else:
            console.line(f"{title}  ({console.elapsed():.0f} s)")

    def advance(self, n: int = 1, total: int | None = None) -> None:
        """`n` more units done, of `total` when it is given (a total learnt on the way)."""
        self.count += n
        if self.bar is None:
            return
        if total is not None and self.bar.total != total:
            self.bar.total = total
            self.bar.bar_format = None
        self.bar.update(n)

    def finished(self, text: str) -> None:
        if self.bar is None:
            self.console.line(f"      {text}")
        else:
            self.runs.append(f"      {text}")
            self.bar.set_postfix_str(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.console.line(f"{self.title}  ✓ {time.perf_counter() - self.started:.0f} s")
            for line in self.runs:
                self.console.line(line)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Console:
    """The job's console (see the module docstring); a context manager. `stream`: where the console writes (default:
    sys.stdout when the console opens)."""

    def __init__(self, log_dir: str | Path, job: str, verbose: bool = False, stream: TextIO | None = None):
        self.log_path = Path(log_dir) / f"{job}.log"
        self.verbose = verbose
        self.stream = stream
        self.tty = False
        self.started = time.perf_counter()
        self._stage: Stage | None = None
        self._undo: list[Callable[[], None]] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def width(self) -> int:
        """The terminal's width in columns; 0 when it is unknown."""
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            return 0

    def line(self, text: str) -> None:
        """A line on the console, above the progress bar if there is one."""
        if self.tty:
            tqdm.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def stage(self, title: str, total: int | None = None, unit: str = "step") -> Stage:
        """The next stage (the one before it ends here if it is still open)."""
        if self._stage is not None:
            self._stage.close()
        self._stage = Stage(self, title, total, unit)
        return self._stage

    def __enter__(self):
        given = self.stream or sys.stdout
        self.tty = bool(getattr(given, "isatty", lambda: False)())
        self.stream = given
        if self.verbose:
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(self.log_path, "a", buffering=1, encoding="utf-8", errors="replace")
        for stream in (sys.stdout, sys.stderr, given):
            stream.flush()
        self.stream = self._own_copy(given)
        if self.stream is not given:
            self._undo.append(lambda: self._close_copy(given))
        self._redirect_descriptors()
        self._redirect_python_streams()
        self._redirect_logging()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._stage is not None:
            self._stage.close()
            self._stage = None
        if self.verbose:
            return
        # A SetupError is one sentence for the user; any other exception's traceback goes to the log too.
        failed = exc_type is not None and issubclass(exc_type, Exception) and not issubclass(exc_type, SetupError)
        if failed:
            traceback.print_exception(exc_type, exc, tb, file=self.log)
        while len(self._undo) > 1:  # all but the console's own stream, which says where the log is
            self._undo.pop()()
        self.log.close()
        if failed:
            self.line(f"failed; the libraries' log is {self.log_path}")
        while self._undo:
            self._undo.pop()()

    # --- quiet: everything but the console's own lines to the log ------------------------------------------------

    def _own_copy(self, given: TextIO) -> TextIO:
        """A stream of the console's own onto what `given` writes to, unaffected when fds 1 and 2 are pointed at the
        log: a duplicate of its file descriptor, or `given` itself when it has none (a StringIO)."""
        try:
            fd = given.fileno()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
            return given
        return open(os.dup(fd), "w", buffering=1, encoding=getattr(given, "encoding", None) or "utf-8",
                    errors="replace")

    def _close_copy(self, given: TextIO) -> None:
        self.stream.close()
        self.stream = given

    def _redirect_descriptors(self) -> None:
        """Point the process's stdout and stderr (where native code and subprocesses write) at the log."""
        saved = {fd: os.dup(fd) for fd in (1, 2)}
        for fd in saved:
            os.dup2(self.log.fileno(), fd)

        def restore() -> None:
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)

        self._undo.append(restore)

    def _redirect_python_streams(self) -> None:
        """sys.stdout and sys.stderr become text streams over fds 1 and 2 (now the log), and so do the logging
        handlers that write to the console's streams. The new streams are never closed: a handler that a library
        creates meanwhile keeps one, and writes to the terminal again once fds 1 and 2 are restored."""
        previous = sys.stdout, sys.stderr
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
        # The logging handlers that libraries made with the streams of their day (DeepSpeed's, Ray's): the same.
        consoles = {id(stream) for stream in (*previous, sys.__stdout__, sys.__stderr__)}
        loggers = [logging.getLogger(), *(logging.getLogger(name) for name in logging.root.manager.loggerDict)]
        moved = [(handler, handler.stream) for logger in loggers for handler in logger.handlers
                 if type(handler) is not logging.FileHandler and isinstance(handler, logging.StreamHandler)
                 and id(handler.stream) in consoles]
        for handler, _ in moved:
            handler.setStream(sys.stderr)

        def restore() -> None:
            for handler, stream in moved:
                handler.setStream(stream)
            sys.stdout.flush()
            sys.stderr.flush()
            sys.stdout, sys.stderr = previous

        self._undo.append(restore)

    def _redirect_logging(self) -> None:
        """Python logging: every record of INFO and above to the log, those that need the user to the console."""
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        to_file = logging.StreamHandler(self.log)
        to_file.setFormatter(logging.Formatter(LOG_FORMAT))
        to_console = _ConsoleHandler(self)
        for handler in handlers:
            root.removeHandler(handler)
        root.addHandler(to_file)
        root.addHandler(to_console)
        root.setLevel(logging.INFO)
        joined = [logging.getLogger(name) for name in NON_PROPAGATING if not logging.getLogger(name).propagate]
        for logger in joined:
            logger.addHandler(to_console)

        def restore() -> None:
            for logger in joined:
                logger.removeHandler(to_console)
            for handler in (to_file, to_console):
                root.removeHandler(handler)
            for handler in handlers:
                root.addHandler(handler)
            root.setLevel(level)

        self._undo.append(restore)
