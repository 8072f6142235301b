"""One lifecycle for every stage: start, stop by a shared deadline, report status.

The agent stops all its stages within one budget (`STOP_BUDGET_S`): `Agent.stop` computes a single
`time.monotonic()` deadline and hands it to every `stop(deadline)`, so a stage that overruns eats
the time of the ones after it instead of adding its own timeout to the total. A background thread
that is still blocked at the deadline (a camera read on a stalled stream, a serial read on a hung
modem, a network loop with a dead broker) is a daemon thread: it is abandoned with a warning naming
it and does not hold up the exit.

`BackgroundLoop` is the one way a stage runs its thread: named, told to stop through an Event,
joined until the shared deadline.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)

# What a SIGTERM gets: everything stopped and the spool committed within this many seconds
# (systemd's TimeoutStopSec leaves room above it; see provisioning/units.py).
STOP_BUDGET_S = 5.0
# The part of the budget kept for the last stages (spool commit, state-dir lock): the others must be
# done (or abandoned) this long before the deadline.
FINAL_SLICE_S = 1.0
# For a stage stopped on its own (tests, tools) rather than by the agent.
DEFAULT_STOP_S = 2.0


@runtime_checkable
class Stage(Protocol):
    """A lifecycle object: started once, stopped once by a deadline shared with the other stages.

    Stages may also offer `name: str` (their field in `Running.services`) and `request_stop()`: tell
    the background work to stop without waiting, so `stop_all` can signal every stage before joining
    any of them.
    """

    def start(self) -> object: ...

    def stop(self, deadline: float) -> None:
        """Stop by `deadline` (a `time.monotonic()` instant); never block past it."""
        ...

    def status(self) -> dict[str, Any]:
        """What the stage reports in status and telemetry (may be empty)."""
        ...


def deadline_in(seconds: float) -> float:
    """A deadline `seconds` from now, on the clock `stop(deadline)` uses."""
    return time.monotonic() + seconds


def remaining(deadline: float) -> float:
    """Seconds left until `deadline` (never negative)."""
    return max(0.0, deadline - time.monotonic())


def resolve_deadline(deadline: float | None) -> float:
    """`stop(deadline=None)` (a stage stopped alone) means `DEFAULT_STOP_S` from now."""
    return deadline_in(DEFAULT_STOP_S) if deadline is None else deadline


class BackgroundLoop:
    """A stage's background thread: named, daemon, stopped through `stopping`, joined by a deadline.

    `target` receives the loop itself; it runs until `loop.stopping` is set, sleeping with
    `loop.wait(seconds)` (returns True when asked to stop) so a stop is seen at once:

        def _run(self, loop: BackgroundLoop) -> None:
            while not loop.wait(self.interval_s):
                self.tick()

    An exception escaping `target` is logged with the thread's name (the thread ends).
    """

    def __init__(self, name: str, target: Callable[[BackgroundLoop], None]) -> None:
        self.name = name
        self._target = target
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> BackgroundLoop:
        if self._thread is not None:
            raise RuntimeError(f"thread {self.name} is already started")
        self.stopping.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._target(self)
        except Exception:
            log.exception("thread %s failed", self.name)

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True when a stop was asked for (then return promptly)."""
        return self.stopping.wait(max(0.0, seconds))

    def request_stop(self) -> None:
        """Ask the loop to stop without waiting (stages wake their own waits after this)."""
        self.stopping.set()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def join(self, deadline: float) -> bool:
        """Wait for the thread until `deadline`; True when it ended (or never ran).

        A thread still running at the deadline is left behind (it is a daemon thread, so it does not
        keep the process alive) with a warning naming it.
        """
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(remaining(deadline))
        if thread.is_alive():
            log.warning("thread %s did not stop by the shutdown deadline; abandoning it", self.name)
            return False
        self._thread = None
        return True

    def stop(self, deadline: float) -> bool:
        """`request_stop()` then `join(deadline)`."""
        self.request_stop()
        return self.join(deadline)


def stop_all(stages: list[Any], deadline: float) -> None:
    """Stop `stages` in the given order by one shared deadline; an error in one does not stop the rest.

    Stages that offer `request_stop()` (tell their thread to stop, do not wait) are all told first,
    so their threads wind down together; a stage stuck past the deadline then costs the others only
    its own join, not their chance to stop.
    """
    for stage in stages:
        request = getattr(stage, "request_stop", None)
        if callable(request):
            try:
                request()
            except Exception:
                log.exception("error asking %s to stop", type(stage).__name__)
    for stage in stages:
        stop_stage(stage, deadline)


def stop_stage(stage: Any, deadline: float) -> None:
    """Stop one stage by `deadline`, logging (not raising) what goes wrong.

    A stage whose `stop()` takes no deadline (an older or third-party stage) is still stopped, with
    a note: it cannot be told how long it has.
    """
    started = time.monotonic()
    try:
        if _takes_deadline(stage.stop):
            stage.stop(deadline)
        else:
            log.info("%s.stop() takes no deadline; it may overrun the shutdown budget", type(stage).__name__)
            stage.stop()
    except Exception:
        log.exception("error stopping %s", type(stage).__name__)
    took = time.monotonic() - started
    if took > 0.5:
        log.info("stopping %s took %.2fs", type(stage).__name__, took)


def _takes_deadline(stop: Callable[..., object]) -> bool:
    try:
        params = inspect.signature(stop).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: assume the protocol
        return True
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)
