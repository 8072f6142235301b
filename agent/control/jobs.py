"""Commands that take minutes (`model/update`, `agent/update`): one at a time each, on their own thread.

The control thread hands the request over and serves other commands meanwhile; the job replies when
its outcome is known (downloads over LTE take a while), and an unexpected failure becomes an error
reply that says what keeps running, never a dead agent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.control.protocol import CommandError
from agent.lifecycle import BackgroundLoop, resolve_deadline

log = logging.getLogger(__name__)

Reply = Callable[[bool, str, dict[str, Any] | None], None]


class Cancelled(Exception):
    """The agent is stopping: the job gives up where it is, leaving what runs untouched."""


class BackgroundCommand:
    """Subclasses set `what` ("model update") and `keeps` ("the previous model stays") and implement
    `work(args, actor) -> (message, data)`, raising CommandError to refuse and checking `cancelled`."""

    what = "job"
    keeps = "nothing changed"
    thread_name = "job"

    def __init__(self) -> None:
        self._job: BackgroundLoop | None = None  # one per job: a job is a thread of its own
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self.last: dict[str, Any] | None = None

    @property
    def busy(self) -> bool:
        return self._job is not None and self._job.alive()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def start(self, args: Any, actor: str, reply: Reply) -> None:
        """Run one job in the background; CommandError at once if one is already running."""
        with self._lock:
            if self.busy:
                raise CommandError(f"another {self.what} is already in progress; wait for its reply")
            self._cancel.clear()
            self._job = BackgroundLoop(self.thread_name, lambda _loop: self._run(args, actor, reply)).start()

    def stop(self, deadline: float | None = None) -> None:
        """Cancel the job in progress and wait for it until `deadline`."""
        self._cancel.set()
        job = self._job
        if job is not None:
            job.request_stop()
            self.wake()
            job.join(resolve_deadline(deadline))

    def wake(self) -> None:
        """Interrupt whatever the job waits on (subclasses with their own conditions override this)."""

    def work(self, args: Any, actor: str) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    def succeeded(self, args: Any, actor: str, data: dict[str, Any]) -> None:
        """Called after the success reply was sent (e.g. to restart into a new release)."""

    def _run(self, args: Any, actor: str, reply: Reply) -> None:
        started = time.monotonic()
        try:
            message, data = self.work(args, actor)
        except CommandError as exc:
            self.last = {"ok": False, "message": str(exc)}
            reply(False, str(exc), exc.data or None)
        except Cancelled:
            self.last = {"ok": False, "message": "cancelled: the agent is stopping"}
            reply(False, f"{self.what} cancelled: the agent is stopping; {self.keeps}", None)
        except Exception as exc:  # never let a job take the agent down
            log.exception("%s failed", self.what)
            self.last = {"ok": False, "message": str(exc)}
            reply(False, f"{self.what} failed ({type(exc).__name__}: {exc}); {self.keeps}", None)
        else:
            self.last = {"ok": True, "message": message, **data}
            data["seconds"] = round(time.monotonic() - started, 1)
            reply(True, message, data)
            self.succeeded(args, actor, data)
