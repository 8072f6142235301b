"""The detector's input path: the reused-tensor writer matches the plain letterbox for every card
option, and the session picks XNNPACK (with its own threads) only on ARM builds that have it."""

from __future__ import annotations

import numpy as np
import pytest

from agent.detect.card import InputSpec
from agent.detect.detector import providers, session_options
from agent.detect.preprocess import InputWriter, letterbox


def reference(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The obvious implementation: letterbox canvas, colour order, layout, float, normalise."""
    canvas, _ = letterbox(
        image, spec.width, spec.height, centre=spec.letterbox == "centre", pad_value=spec.pad_value
    )
    pixels = (canvas[..., ::-1] if spec.color == "RGB" else canvas).astype(np.float32)
    pixels = (pixels * spec.scale - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
    return (pixels.transpose(2, 0, 1) if spec.layout == "NCHW" else pixels)[None]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("color", ["BGR", "RGB"])
@pytest.mark.parametrize("placement", ["top-left", "centre"])
@pytest.mark.parametrize("normalised", [False, True])
def test_writer_matches_the_plain_letterbox(layout, color, placement, normalised):
    norm = {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]} if normalised else {}
    spec = InputSpec(width=96, height=64, layout=layout, color=color, letterbox=placement, **norm)
    writer = InputWriter(spec)
    rng = np.random.default_rng(1)
    # wide, tall, exactly the input size, a crop view (strided), and the first size again: the padding
    # must follow the image area every time the frame size changes
    big = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    for image in (
        rng.integers(0, 256, (120, 200, 3), dtype=np.uint8),
        rng.integers(0, 256, (300, 100, 3), dtype=np.uint8),
        rng.integers(0, 256, (64, 96, 3), dtype=np.uint8),
        big[10:74, 20:116],
        rng.integers(0, 256, (120, 200, 3), dtype=np.uint8),
    ):
        lb = writer(image)
        assert lb == letterbox(image, 96, 64, centre=placement == "centre")[1]
        np.testing.assert_allclose(writer.tensor, reference(image, spec), atol=1e-4)


def test_xnnpack_only_on_arm_builds_that_have_it():
    both = ["XnnpackExecutionProvider", "CPUExecutionProvider"]
    assert providers(4, available=both, machine="aarch64") == [
        ("XnnpackExecutionProvider", {"intra_op_num_threads": "4"}),
        "CPUExecutionProvider",
    ]
    assert providers(4, available=both, machine="x86_64") == ["CPUExecutionProvider"]
    assert providers(4, available=["CPUExecutionProvider"], machine="aarch64") == ["CPUExecutionProvider"]


def test_session_threads_follow_the_provider():
    assert session_options(3).intra_op_num_threads == 3
    with_xnnpack = session_options(3, xnnpack=True)  # XNNPACK's pool does the work; ours must not compete
    assert with_xnnpack.intra_op_num_threads == 1
    assert with_xnnpack.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options(2, spinning=True).get_session_config_entry("session.intra_op.allow_spinning") == "1"
