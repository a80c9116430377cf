"""`make test`'s console: one line per slow phase and per failure; everything else goes to a log file.

The suite takes minutes on two cores, and a screen of dots says neither where they go nor what a failed test printed.
The console gets a line for each setup, call or teardown that took at least `slow_phase_s` seconds and for each one
that failed, with the count of tests finished; the file (`full_log`, named on the console at the start and the end)
gets every phase's outcome, duration, captured output and traceback, and all durations sorted. `-v` brings back
pytest's own line per test. Both settings are ini options (`[tool.pytest.ini_options]` in pyproject.toml).
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("full_log", "file that gets every test's outcome, duration and output", default="runs/pytest.log")
    parser.addini("slow_phase_s", "the console gets a line for each test phase at least this long", default="10")


@pytest.hookimpl(trylast=True)  # after pytest's terminal plugin has registered its reporter
def pytest_configure(config: pytest.Config) -> None:
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None and not hasattr(config, "workerinput"):  # not inside an xdist worker
        config.pluginmanager.register(FullLog(config, terminal), "maple-full-log")


class FullLog:
    def __init__(self, config: pytest.Config, terminal):
        self.path = (config.rootpath / config.getini("full_log")).resolve()
        self.slow_s = float(config.getini("slow_phase_s"))
        self.quiet = config.get_verbosity() <= 0
        self.terminal = terminal
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 (open from configure to unconfigure)
        self.phases: list[tuple[float, str, str]] = []  # (seconds, phase, test)
        self.finished = 0
        self.collected = 0

    def _write(self, text: str) -> None:
        self.file.write(text if text.endswith("\n") else text + "\n")
        self.file.flush()  # `tail -f` the file while the suite runs

    def pytest_sessionstart(self) -> None:
        self.terminal.write_line(f"full log: {self.path}")

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.collected = len(session.items)
        self._write(f"collected {self.collected} tests")

    @pytest.hookimpl(wrapper=True)
    def pytest_report_teststatus(self, report: pytest.TestReport):
        category, letter, word = yield
        # No letter: pytest's quiet console writes nothing for the phase (the word still serves the summary, the
        # category the counts); pytest_runtest_logreport below writes the lines that matter.
        return (category, "", word) if self.quiet else (category, letter, word)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self._write(f"COLLECTION ERROR {report.nodeid}\n{report.longreprtext}")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "teardown":
            self.finished += 1
        outcome = "ERROR" if report.failed and report.when != "call" else report.outcome.upper()
        self.phases.append((report.duration, report.when, report.nodeid))
        self._write(f"{outcome:8} {report.duration:8.2f} s  {report.when:8}  {report.nodeid}")
        for title, content in report.sections:
            if title.endswith(f" {report.when}") and content.strip():  # a phase's report repeats earlier phases'
                self._write(f"--- {title} ---\n{content}")
        if report.longrepr is not None and not report.passed:
            self._write(f"--- {outcome.lower()} ---\n{report.longreprtext}")
        if self.quiet and (report.failed or report.duration >= self.slow_s):
            mark = f"{outcome} " if report.failed else ""
            self.terminal.write_line(f"[{self.finished:>4}/{self.collected}] {report.duration:6.0f} s  "
                                     f"{report.when:8}  {mark}{report.nodeid}")

    def pytest_terminal_summary(self) -> None:
        self._write("\nevery phase of at least 0.5 s, slowest first:")
        for seconds, when, nodeid in sorted(self.phases, reverse=True):
            if seconds >= 0.5:
                self._write(f"{seconds:8.1f} s  {when:8}  {nodeid}")
        self.terminal.write_line(f"full log (every test's output, traceback and duration): {self.path}")

    def pytest_unconfigure(self) -> None:
        self.file.close()

