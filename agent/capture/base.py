"""What every frame source delivers, and the errors they raise."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np


class SourceError(Exception):
    """The source cannot be opened or read at all (a user-facing error: bad path, no camera...)."""


class SourceUnavailable(SourceError):
    """A live camera or stream is not there *now* (not plugged in, still booting, unreachable).

    Unlike a plain SourceError (a typo in a path, picamera2 not installed), waiting may cure it: the
    capture stage keeps retrying with backoff instead of stopping the agent.
    """


class SourceLost(Exception):
    """A live stream went away after it had worked; the capture stage reconnects with backoff."""


@dataclass(frozen=True)
class TruthBox:
    """Ground truth for one object in a synthetic frame (pixel box x1, y1, x2, y2)."""

    object_id: int
    label: str
    box: tuple[float, float, float, float]
    moving: bool = True


@dataclass
class Frame:
    """One analysis frame.

    `t` is stream time in seconds: media time for files and the synthetic scene (so results do
    not depend on how fast the machine is), monotonic time for live cameras. `mono` is when the
    frame was captured on this machine. `main` is an optional high-resolution image of the same
    instant (picamera2's main stream) used only for crops.
    """

    image: np.ndarray
    index: int
    t: float
    mono: float
    main: np.ndarray | None = None
    truth: list[TruthBox] | None = field(default=None, repr=False)

    @property
    def crop_source(self) -> np.ndarray:
        return self.image if self.main is None else self.main


class FrameSource(abc.ABC):
    """A camera, a file, a stream or the synthetic scene.

    `live` sources produce frames in real time whether we read them or not (we may only drop);
    recorded sources can be paced or read as fast as possible. `reconnectable` sources get
    reopened with backoff after SourceLost.
    """

    name: str = "source"
    live: bool = False
    reconnectable: bool = False

    @property
    @abc.abstractmethod
    def fps(self) -> float: ...

    @abc.abstractmethod
    def open(self) -> None:
        """Acquire the device or file; raise SourceError with a clear message if impossible."""

    @abc.abstractmethod
    def read(self) -> Frame | None:
        """Next frame, None at the end of a recorded stream; raise SourceLost if a live stream dies."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
