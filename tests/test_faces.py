"""Face redaction with the real CenterFace model on a real photograph composited into street frames."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent import models
from agent.capture.base import Frame
from agent.capture.synthetic import SceneOptions, SyntheticScene
from agent.clock import Clock
from agent.config.privacy import FacesConfig, Mask
from agent.config.schema import EventsConfig, MotionConfig
from agent.detect import load_detector
from agent.detect.manifest import find_card
from agent.events import EventEmitter, EventFactory
from agent.events.thumbs import CropThumbnailer, crop_box
from agent.motion import MotionGate
from agent.pipeline import Pipeline
from agent.privacy import FaceModelError, MaskSet, Redactor, load_face_detector
from agent.privacy.faces import FaceDetector, dynamic_centerface
from agent.track import Tracker
from agent.uplink.spool import Spool
from tests.conftest import ASTRONAUT, CENTERFACE, DATA, YOLOX, shared
from tests.fileserver import FileServer

THRESHOLD = 0.3


@pytest.fixture(scope="module")
def faces() -> FaceDetector:
    return load_face_detector(str(shared(CENTERFACE)), None, score_threshold=THRESHOLD)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return cv2.imread(str(shared(ASTRONAUT)))


def street_with(astronaut: np.ndarray, size: int, x: int, y: int = 30) -> np.ndarray:
    frame = SyntheticScene(1, options=SceneOptions(actors=[])).render(0)[0]
    frame[y : y + size, x : x + size] = cv2.resize(astronaut, (size, size), interpolation=cv2.INTER_AREA)
    return frame


def decode(jpeg: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)


def test_the_declared_input_is_rewritten_to_any_multiple_of_32(faces):
    import onnx

    model = onnx.load_from_string(dynamic_centerface(shared(CENTERFACE), "input.1"))
    (image_input,) = model.graph.input  # the weights are no longer listed as inputs
    dims = [d.dim_value or d.dim_param for d in image_input.type.tensor_type.shape.dim]
    assert dims == [1, 3, "H", "W"]
    card, _ = find_card(shared(CENTERFACE))  # the pristine file is recognised by its sha256
    assert card.task == "face" and card.output.decoder == "centerface"
    photo = cv2.imread(str(shared(ASTRONAUT)))
    canvas = np.zeros((300, 600, 3), np.uint8)  # not square, not a multiple of 32: padded inside
    canvas[:, 150:450] = cv2.resize(photo, (300, 300))
    for image, (fx, fy) in ((photo, (224, 110)), (cv2.resize(photo, (200, 200)), (87, 43)), (canvas, (281, 64))):
        found = faces.detect(image)
        assert found and found[0][4] > 0.5
        x1, y1, x2, y2, _ = found[0]
        assert x1 < fx < x2 and y1 < fy < y2  # SOURCE.md: the face is at about (224, 104) of 512


@pytest.mark.parametrize("method", ["pixelate", "blur", "fill"])
@pytest.mark.parametrize("size", [240, 120])
def test_thumbnail_face_is_redacted_and_the_rest_kept(faces, astronaut, method, size):
    x = 300
    frame = Frame(image=street_with(astronaut, size, x), index=0, t=0.0, mono=0.0)
    box = (x / 640, 30 / 360, (x + size) / 640, (30 + size) / 360)
    redactor = Redactor(MaskSet(), faces, FacesConfig(method=method), max_side=320, quality=85)
    thumb = redactor(frame, box, [("person", box)])
    plain = CropThumbnailer(max_side=320, quality=85)(frame, box, [])
    assert thumb is not None and plain is not None and thumb.redaction == ("faces",)
    assert (thumb.width, thumb.height) == (plain.width, plain.height)
    before, after = decode(plain.jpeg), decode(thumb.jpeg)

    found = faces.detect(before)
    assert found and found[0][4] > 0.7  # the unredacted crop shows a face
    assert faces.detect(after) == []  # the emitted thumbnail does not
    fx1, fy1, fx2, fy2, _ = found[0]
    grow = FacesConfig().margin * max(fx2 - fx1, fy2 - fy1) + 8  # the redaction margin, plus a JPEG block
    face = np.zeros(before.shape[:2], bool)
    face[int(fy1) : int(fy2), int(fx1) : int(fx2)] = True
    keep = np.ones(before.shape[:2], bool)
    keep[max(0, int(fy1 - grow)) : int(fy2 + grow), max(0, int(fx1 - grow)) : int(fx2 + grow)] = False
    diff = np.abs(before.astype(int) - after.astype(int)).max(axis=2)
    assert diff[face].mean() > 20  # the face's pixels changed
    assert keep.mean() > 0.5 and diff[keep].mean() < 1.0 and np.percentile(diff[keep], 99.5) < 12


def test_faces_of_bystanders_in_a_car_thumbnail_are_redacted_too(faces, astronaut):
    frame = Frame(image=street_with(astronaut, 150, 380, 60), index=0, t=0.0, mono=0.0)
    car = (0.45, 0.1, 0.95, 0.8)  # a big box around the "bystander"
    thumb = Redactor(MaskSet(), faces, FacesConfig())(frame, car, [("car", car)])
    assert thumb is not None and faces.detect(decode(thumb.jpeg)) == []


def test_full_frames_for_snapshots_are_masked_and_redacted(faces, astronaut):
    image = cv2.resize(street_with(astronaut, 200, 100), (1920, 1080))  # a main-stream sized frame
    masks = MaskSet([Mask(name="shop", polygon=[(0.8, 0.0), (1.0, 0.0), (1.0, 0.5), (0.8, 0.5)])])
    redacted = Redactor(masks, faces, FacesConfig()).redact_frame(image)
    assert redacted.redaction == ("masks", "faces")
    assert faces.detect(image) and faces.detect(redacted.image) == []
    assert not redacted.image[:540, 1536:].any()


def test_without_a_face_model_the_fallback_applies_never_silence(astronaut, tmp_path):
    with pytest.raises(FaceModelError, match="not installed"):
        load_face_detector("centerface", tmp_path)
    frame = Frame(image=street_with(astronaut, 200, 300), index=0, t=0.0, mono=0.0)
    person = (300 / 640, 30 / 360, 500 / 640, 230 / 360)
    car = (0.0, 0.55, 0.3, 0.85)
    pixelating = Redactor(MaskSet(), None, FacesConfig(fallback="pixelate_persons"))
    thumb = pixelating(frame, person, [("person", person), ("car", car)])
    assert thumb is not None and thumb.redaction == ("pixelated",)
    assert pixelating(frame, car, [("person", person), ("car", car)]).redaction == ()  # no person in it
    dropping = Redactor(MaskSet(), None, FacesConfig(fallback="drop_person_thumbnails"))
    assert dropping(frame, person, [("person", person)]) is None
    assert dropping(frame, car, [("person", person), ("car", car)]) is not None
    assert dropping.counts["refused"] == 1


def test_pixelated_person_shows_no_face(faces, astronaut):
    frame = Frame(image=street_with(astronaut, 240, 300), index=0, t=0.0, mono=0.0)
    person = (300 / 640, 30 / 360, 540 / 640, 270 / 360)
    thumb = Redactor(MaskSet(), None, FacesConfig())(frame, person, [("person", person)])
    assert faces.detect(decode(thumb.jpeg)) == []


class BrokenFaces:
    def detect(self, image):
        raise RuntimeError("onnxruntime fell over")

    def info(self):
        return {"name": "broken", "sha256": "0" * 64}


def test_a_failing_face_model_falls_back(astronaut):
    frame = Frame(image=street_with(astronaut, 200, 300), index=0, t=0.0, mono=0.0)
    person = (300 / 640, 30 / 360, 500 / 640, 230 / 360)
    redactor = Redactor(MaskSet(), BrokenFaces(), FacesConfig())
    thumb = redactor(frame, person, [("person", person)])
    assert thumb.redaction == ("pixelated",) and redactor.counts["face_errors"] == 1


def test_models_fetch_centerface_from_a_mirror_and_load_it(tmp_path):
    shared(CENTERFACE)
    mirror = FileServer(DATA / "models")
    try:
        path = models.fetch("centerface", tmp_path, mirror=mirror.url)
    finally:
        mirror.close()
    assert path == tmp_path / "models" / "centerface" / "centerface.onnx"
    assert json.loads(path.with_suffix(".card.json").read_text())["task"] == "face"
    detector = load_face_detector("centerface", tmp_path)
    assert detector.sha256 == "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"
    with pytest.raises(Exception, match="not an object detector"):
        load_detector(path)


def test_end_to_end_the_emitted_thumbnail_has_no_face(tmp_path: Path, faces, astronaut):
    """YOLOX finds the person, the pipeline emits object_appeared with a redacted thumbnail."""
    detector = load_detector(shared(YOLOX), classes=["person"])
    spool = Spool(tmp_path / "spool").start()
    records = []
    spool.add_listener(records.extend)
    pipeline = Pipeline(
        detector=detector,
        gate=MotionGate(MotionConfig()),
        tracker=Tracker(),
        factory=EventFactory("faces-node", Clock(), detector.info),
        emitter=EventEmitter(spool),
        events_cfg=EventsConfig(),
    )
    redactor = Redactor(MaskSet(), faces, FacesConfig())
    pipeline.filters.append(redactor.filter)
    pipeline.thumbnailer = redactor
    try:
        for i in range(12):  # the person steps slowly to the right
            image = street_with(astronaut, 220, 180 + 4 * i)
            pipeline.process(Frame(image=image, index=i, t=i / 10, mono=time.monotonic()))
        assert spool.flush(10.0)
    finally:
        spool.stop()
    (event,) = [json.loads(r.payload) for r in records if r.stream == "events"]
    (jpeg,) = [r.payload for r in records if r.stream == "thumbs"]
    assert event["type"] == "object_appeared" and event["label"] == "person"
    assert event["thumb"]["redaction"] == ["faces"]
    thumb = decode(jpeg)
    assert faces.detect(thumb) == []
    x1, y1, x2, y2 = crop_box((360, 640), tuple(event["bbox"]), EventsConfig().thumb_margin)
    plain = cv2.resize(street_with(astronaut, 220, 180 + 4 * 2)[y1:y2, x1:x2], (thumb.shape[1], thumb.shape[0]))
    assert faces.detect(plain)  # the same crop unredacted shows the face
