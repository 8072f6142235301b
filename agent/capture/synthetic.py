"""A deterministic synthetic street: people on the pavements, cars and trucks on the road.

The same seed always gives the same frames and the same ground truth, so tracker and rule tests
can assert exact outcomes, and the default model is trained on it (models/build_default.py).
Nothing here is random at draw time except through the seeded generator.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from agent.capture.base import Frame, FrameSource, TruthBox

WIDTH, HEIGHT = 640, 360
LABELS = ("person", "car", "truck")

# Scene layout (rows in pixels): pavements and the two traffic lanes.
FAR_PAVEMENT_FEET = (168, 176)
NEAR_PAVEMENT_FEET = (318, 350)
LANES = ((222, -1), (278, +1))  # (bottom row of vehicles, direction)
PARKING_ROW = 302


@dataclass
class Actor:
    """One object crossing the scene (or standing still when vx == 0)."""

    object_id: int
    label: str
    start: int  # first frame index
    x0: float  # left edge (vehicles) or centre (people) at `start`
    base_y: float  # feet / wheel line
    vx: float  # pixels per frame (signed)
    size: float  # person height or vehicle length
    colors: tuple[tuple[int, int, int], ...]
    stop: tuple[int, int] | None = None  # (frame, duration in frames) of a pause, if any
    end: int | None = None  # last frame the actor exists (for scripted scenes)

    def x_at(self, frame: int) -> float:
        dt = frame - self.start
        if self.stop is not None:
            stop_at, duration = self.stop
            if frame >= stop_at:
                dt -= min(frame - stop_at, duration)
        return self.x0 + self.vx * dt

    def box_at(self, frame: int) -> tuple[float, float, float, float]:
        x = self.x_at(frame)
        if self.label == "person":
            h = self.size
            return (x - 0.19 * h, self.base_y - h, x + 0.19 * h, self.base_y)
        length = self.size
        height = length * (0.4 if self.label == "car" else 0.52)
        return (x, self.base_y - height, x + length, self.base_y)

    def moving_at(self, frame: int) -> bool:
        if self.vx == 0:
            return False
        if self.stop is not None:
            stop_at, duration = self.stop
            return not (stop_at <= frame < stop_at + duration)
        return True


@dataclass
class SceneOptions:
    """Knobs for tests: a parked car, a light curve, spawn density."""

    parked_car: bool = True
    mean_gap_s: float = 4.0
    noise_sigma: float = 2.0
    labels: tuple[str, ...] = LABELS
    light: Callable[[float], float] | None = None  # time (s) -> brightness factor
    actors: list[Actor] | None = None  # a fixed script instead of random traffic
    empty_until_s: float = 1.0
    extra: dict = field(default_factory=dict)


def _visible_fraction(box: tuple[float, float, float, float]) -> float:
    x1, y1, x2, y2 = box
    area = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    if area <= 0:
        return 0.0
    cx1, cy1, cx2, cy2 = max(0.0, x1), max(0.0, y1), min(WIDTH, x2), min(HEIGHT, y2)
    return max(0.0, cx2 - cx1) * max(0.0, cy2 - cy1) / area


class SyntheticScene:
    """Frame-indexed scene generator; frames must be requested in increasing order."""

    def __init__(self, seed: int = 0, fps: float = 10.0, options: SceneOptions | None = None):
        self.seed = seed
        self.fps = fps
        self.options = options or SceneOptions()
        self._rng = np.random.default_rng(seed)
        self._background = self._draw_background()
        noise_rng = np.random.default_rng(seed + 7919)
        self._noise = [
            noise_rng.normal(0.0, self.options.noise_sigma, (HEIGHT, WIDTH, 1)).astype(np.int16)
            for _ in range(8)
        ]
        self.actors: list[Actor] = []
        self._next_id = 1
        self._next_spawn = int(self.options.empty_until_s * fps)
        if self.options.actors is not None:
            self.actors = list(self.options.actors)
            self._next_spawn = 1 << 62
        elif self.options.parked_car:
            self.actors.append(self._parked_car())

    # -- layout -----------------------------------------------------------------------------------
    def _draw_background(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed + 104729)
        img = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        for y in range(0, 150):  # sky to haze
            t = y / 150
            img[y, :] = (int(200 - 40 * t), int(170 - 20 * t), int(140 - 10 * t))
        x = 0
        while x < WIDTH:  # buildings with windows
            w = int(rng.integers(60, 140))
            top = int(rng.integers(15, 90))
            tone = int(rng.integers(70, 150))
            tint = rng.integers(-20, 20, 3)
            color = tuple(int(np.clip(tone + t, 0, 255)) for t in tint)
            cv2.rectangle(img, (x, top), (x + w, 150), color, -1)
            for wy in range(top + 8, 140, 18):
                for wx in range(x + 6, x + w - 10, 16):
                    lit = rng.random() < 0.3
                    cv2.rectangle(
                        img, (wx, wy), (wx + 8, wy + 10), (120, 200, 230) if lit else (60, 55, 50), -1
                    )
            x += w + int(rng.integers(0, 12))
        img[150:178] = (165, 168, 170)  # far pavement
        img[178:300] = (78, 80, 82)  # road
        img[300:312] = (120, 122, 125)  # kerb / parking strip edge
        img[312:] = (170, 172, 175)  # near pavement
        for x in range(0, WIDTH, 40):  # lane markings and pavement tiles
            cv2.rectangle(img, (x, 238), (x + 22, 241), (220, 220, 220), -1)
            cv2.line(img, (x, 312), (x - 30, HEIGHT), (150, 152, 155), 1)
        cv2.line(img, (0, 178), (WIDTH, 178), (200, 200, 200), 2)
        return img

    def _parked_car(self) -> Actor:
        colors = self._vehicle_colors()
        actor = Actor(self._next_id, "car", 0, 470.0, PARKING_ROW, 0.0, 128.0, colors)
        self._next_id += 1
        return actor

    def _vehicle_colors(self) -> tuple[tuple[int, int, int], ...]:
        palette = [
            (40, 40, 200),
            (200, 60, 40),
            (230, 230, 230),
            (30, 30, 30),
            (40, 160, 220),
            (60, 140, 60),
            (150, 150, 150),
            (20, 100, 180),
        ]
        body = palette[int(self._rng.integers(0, len(palette)))]
        return (body,)

    def _person_colors(self) -> tuple[tuple[int, int, int], ...]:
        shirt = self._rng.integers(20, 235, 3)
        trousers = self._rng.integers(10, 120, 3)
        skin = self._rng.choice([(90, 120, 170), (120, 160, 210), (60, 80, 120), (140, 180, 225)])
        return tuple((int(c[0]), int(c[1]), int(c[2])) for c in (shirt, trousers, skin))

    def _spawn(self, frame: int) -> None:
        rng = self._rng
        label = str(rng.choice(self.options.labels, p=self._label_weights()))
        speed_scale = 10.0 / self.fps
        if label == "person":
            far = rng.random() < 0.35
            feet = rng.uniform(*(FAR_PAVEMENT_FEET if far else NEAR_PAVEMENT_FEET))
            height = rng.uniform(42, 52) if far else rng.uniform(62, 78)
            direction = 1 if rng.random() < 0.5 else -1
            vx = direction * rng.uniform(2.0, 4.0) * speed_scale * (0.7 if far else 1.0)
            x0 = -0.2 * height if direction > 0 else WIDTH + 0.2 * height
            stop = None
            if rng.random() < 0.25:
                stop = (frame + int(rng.integers(20, 60)), int(rng.integers(10, 40)))
            actor = Actor(self._next_id, label, frame, x0, feet, vx, height, self._person_colors(), stop)
        else:
            lane_bottom, direction = LANES[int(rng.integers(0, len(LANES)))]
            length = rng.uniform(100, 130) if label == "car" else rng.uniform(160, 190)
            vx = direction * rng.uniform(6.0, 14.0) * speed_scale
            x0 = -length if direction > 0 else WIDTH
            actor = Actor(
                self._next_id,
                label,
                frame,
                x0,
                lane_bottom + rng.uniform(-3, 3),
                vx,
                length,
                self._vehicle_colors(),
            )
        self._next_id += 1
        self.actors.append(actor)

    def _label_weights(self) -> list[float]:
        base = {"person": 0.55, "car": 0.35, "truck": 0.10}
        weights = [base.get(lbl, 0.1) for lbl in self.options.labels]
        total = sum(weights)
        return [w / total for w in weights]

    def _advance(self, frame: int) -> None:
        while frame >= self._next_spawn:
            self._spawn(self._next_spawn)
            gap = self._rng.exponential(self.options.mean_gap_s) + 0.8
            self._next_spawn += max(1, int(gap * self.fps))
        self.actors = [a for a in self.actors if not self._gone(a, frame)]

    def _gone(self, actor: Actor, frame: int) -> bool:
        if actor.end is not None and frame > actor.end:
            return True
        if frame <= actor.start or actor.vx == 0:
            return False
        x1, _, x2, _ = actor.box_at(frame)
        return (actor.vx > 0 and x1 > WIDTH) or (actor.vx < 0 and x2 < 0)

    # -- drawing ----------------------------------------------------------------------------------
    def _draw_person(self, img: np.ndarray, actor: Actor, frame: int) -> None:
        h = actor.size
        x = actor.x_at(frame)
        feet = actor.base_y
        shirt, trousers, skin = actor.colors
        phase = math.sin((frame - actor.start) * 0.6) if actor.moving_at(frame) else 0.0
        head_r = max(2, int(0.085 * h))
        cv2.circle(img, (int(x), int(feet - h + head_r)), head_r, skin, -1, cv2.LINE_AA)
        cv2.circle(img, (int(x), int(feet - h + head_r * 0.7)), head_r, (30, 30, 40), 1, cv2.LINE_AA)
        torso_top, torso_bottom = feet - 0.8 * h, feet - 0.45 * h
        half = 0.15 * h
        cv2.rectangle(img, (int(x - half), int(torso_top)), (int(x + half), int(torso_bottom)), shirt, -1)
        leg_w = max(2, int(0.09 * h))
        for side in (-1, 1):
            foot_x = x + side * 0.06 * h + side * phase * 0.12 * h
            cv2.line(
                img, (int(x + side * 0.06 * h), int(torso_bottom)), (int(foot_x), int(feet)), trousers, leg_w
            )
            hand_x = x + side * 0.19 * h - side * phase * 0.05 * h
            cv2.line(
                img,
                (int(x + side * half), int(torso_top + 2)),
                (int(hand_x), int(feet - 0.5 * h)),
                shirt,
                max(1, leg_w - 1),
            )

    def _draw_vehicle(self, img: np.ndarray, actor: Actor, frame: int) -> None:
        x1, y1, x2, y2 = actor.box_at(frame)
        length, height = x2 - x1, y2 - y1
        (body,) = actor.colors
        forward = actor.vx >= 0
        wheel_r = int(0.19 * height) if actor.label == "car" else int(0.15 * height)
        if actor.label == "car":
            cabin = np.array(
                [
                    [x1 + 0.22 * length, y1 + 0.42 * height],
                    [x1 + 0.32 * length, y1],
                    [x1 + 0.7 * length, y1],
                    [x1 + 0.8 * length, y1 + 0.42 * height],
                ]
            )
            if not forward:
                cabin[:, 0] = x1 + x2 - cabin[:, 0]
            cv2.fillPoly(img, [cabin.astype(np.int32)], body, cv2.LINE_AA)
            inner = cabin.copy()
            inner[:, 1] = np.clip(inner[:, 1], y1 + 0.1 * height, None)
            inner[:, 0] = inner[:, 0] * 0.88 + inner[:, 0].mean() * 0.12
            cv2.fillPoly(img, [inner.astype(np.int32)], (70, 50, 40), cv2.LINE_AA)
            cv2.rectangle(
                img, (int(x1), int(y1 + 0.4 * height)), (int(x2), int(y2 - wheel_r * 0.8)), body, -1
            )
        else:
            cab_len = 0.28 * length
            cab_x1 = x2 - cab_len if forward else x1
            box_x1, box_x2 = (x1, x2 - cab_len - 3) if forward else (x1 + cab_len + 3, x2)
            cv2.rectangle(img, (int(box_x1), int(y1)), (int(box_x2), int(y2 - wheel_r)), (215, 215, 210), -1)
            cv2.rectangle(
                img,
                (int(cab_x1), int(y1 + 0.25 * height)),
                (int(cab_x1 + cab_len), int(y2 - wheel_r)),
                body,
                -1,
            )
            wx = cab_x1 + (cab_len * 0.55 if forward else cab_len * 0.1)
            cv2.rectangle(
                img,
                (int(wx), int(y1 + 0.32 * height)),
                (int(wx + cab_len * 0.35), int(y1 + 0.55 * height)),
                (70, 50, 40),
                -1,
            )
        for fx in (0.2, 0.8):
            cx = int(x1 + fx * length)
            cv2.circle(img, (cx, int(y2 - wheel_r)), wheel_r, (20, 20, 20), -1, cv2.LINE_AA)
            cv2.circle(img, (cx, int(y2 - wheel_r)), max(1, wheel_r // 2), (140, 140, 140), -1, cv2.LINE_AA)
        lamp_x = int(x2 - 4) if forward else int(x1 + 1)
        cv2.rectangle(
            img, (lamp_x, int(y1 + 0.5 * height)), (lamp_x + 3, int(y1 + 0.6 * height)), (200, 240, 255), -1
        )

    def render(self, frame: int) -> tuple[np.ndarray, list[TruthBox]]:
        """The image and ground truth of frame `frame` (indices must not go backwards)."""
        self._advance(frame)
        img = self._background.copy()
        truth: list[TruthBox] = []
        # draw far objects first so near ones occlude them
        for actor in sorted((a for a in self.actors if a.start <= frame), key=lambda a: a.base_y):
            box = actor.box_at(frame)
            if _visible_fraction(box) <= 0:
                continue
            if actor.label == "person":
                self._draw_person(img, actor, frame)
            else:
                self._draw_vehicle(img, actor, frame)
            if _visible_fraction(box) >= 0.5:
                clipped = (
                    max(0.0, box[0]),
                    max(0.0, box[1]),
                    min(float(WIDTH), box[2]),
                    min(float(HEIGHT), box[3]),
                )
                truth.append(TruthBox(actor.object_id, actor.label, clipped, actor.moving_at(frame)))
        out = img.astype(np.int16)
        out += self._noise[frame % len(self._noise)]
        if self.options.light is not None:
            factor = float(self.options.light(frame / self.fps))
            out = (out.astype(np.float32) * factor).astype(np.int16)
        return np.clip(out, 0, 255).astype(np.uint8), truth


class SyntheticSource(FrameSource):
    """The synthetic scene as a frame source (`synthetic[:SEED]`)."""

    name = "synthetic"
    live = False

    def __init__(
        self,
        seed: int = 0,
        fps: float = 10.0,
        options: SceneOptions | None = None,
        max_frames: int | None = None,
    ):
        self.seed = seed
        self._fps = fps
        self.options = options
        self.max_frames = max_frames
        self.scene: SyntheticScene | None = None
        self._index = 0
        self._t0 = 0.0

    @property
    def fps(self) -> float:
        return self._fps

    def open(self) -> None:
        self.scene = SyntheticScene(self.seed, self._fps, self.options)
        self._index = 0
        self._t0 = time.monotonic()

    def read(self) -> Frame | None:
        if self.scene is None:
            raise RuntimeError("source not opened")
        if self.max_frames is not None and self._index >= self.max_frames:
            return None
        image, truth = self.scene.render(self._index)
        frame = Frame(
            image=image, index=self._index, t=self._index / self._fps, mono=time.monotonic(), truth=truth
        )
        self._index += 1
        return frame

    def close(self) -> None:
        self.scene = None
