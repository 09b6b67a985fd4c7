"""A small load generator: threads that repeat one piece of work and record every outcome with its time.

For the high-availability tests: the work is a verify (or a login and a verify);
an outcome is what it answered ("200", "401", "503") or the exception's name
when there was no answer. The record tells how many failed and for how long.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests

from tests.servers.process import REPO


@dataclass(frozen=True)
class Outcome:
    started: float  # time.monotonic()
    ended: float
    result: str  # the status code, or the exception's class name
    thread: int

    @property
    def ok(self) -> bool:
        return self.result == "200"


class Load:
    """`threads` threads calling `work(http, thread_index, round)` until `stop()`; each returns a status code."""

    def __init__(self, work: Callable[[requests.Session, int, int], int], threads: int = 4):
        self._work = work
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.outcomes: list[Outcome] = []
        self._threads = [threading.Thread(target=self._run, args=(index,), daemon=True, name=f"load-{index}")
                         for index in range(threads)]

    def _run(self, index: int) -> None:
        http = requests.Session()  # keep-alive, as a proxy or a browser would
        round_ = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                result = str(self._work(http, index, round_))
            except requests.RequestException as exc:
                result = type(exc).__name__
                http = requests.Session()
            with self._lock:
                self.outcomes.append(Outcome(started, time.monotonic(), result, index))
            round_ += 1

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- what happened ------------------------------------------------------------
    def since(self, moment: float) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.started >= moment]

    def wait_for_ok_after(self, moment: float, count: int = 1, timeout: float = 30.0) -> float:
        """Wait until `count` outcomes that started after `moment` succeeded on every thread; their first time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            recent = self.since(moment)
            per_thread = {index: [o for o in recent if o.thread == index and o.ok] for index in range(len(self._threads))}
            if all(len(oks) >= count for oks in per_thread.values()):
                return min(oks[0].started for oks in per_thread.values())
            time.sleep(0.05)
        raise TimeoutError(f"no success on every load thread within {timeout}s after the event: "
                           f"{summary(self.since(moment))}")


def summary(outcomes: list[Outcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.result] = counts.get(outcome.result, 0) + 1
    return counts


def failed_window(outcomes: list[Outcome]) -> float:
    """Seconds from the start of the first failed outcome to the end of the last one (0 when none failed)."""
    failed = [o for o in outcomes if not o.ok]
    if not failed:
        return 0.0
    return max(o.ended for o in failed) - min(o.started for o in failed)


def record_figures(name: str, figures: dict[str, object]) -> None:
    """Print the measured figures and keep them in test-artifacts/high-availability/NAME.json (for the note)."""
    folder = REPO / "test-artifacts" / "high-availability"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"{name}: {json.dumps(figures)}")
