#!/usr/bin/env python3
"""Build the shipped default detector, models/vigil-synth, from the synthetic street scene.

Reproducible and CPU-only: fixed seeds, deterministic torch kernels, one thread pool. It renders
training frames from agent.capture.synthetic (seeds 1000+), trains a small anchor-free detector
whose output has the YOLOX layout ([1, N, 5 + C], sigmoid applied to objectness and classes, raw
grid box terms), exports ONNX, and evaluates precision/recall on held-out seeds (1..20) through
the agent's own detector code, writing models/vigil-synth/REPORT.json.

    pip install -e '.[train]'
    python models/build_default.py            # about 10 minutes on 2 cores

Needs torch (2.13.0 CPU pinned in the `train` extra) and onnx; the agent itself never imports torch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.capture.synthetic import HEIGHT, WIDTH, SceneOptions, SyntheticScene  # noqa: E402
from agent.detect.preprocess import letterbox  # noqa: E402

LABELS = ["person", "car", "truck"]
IN_W, IN_H = 320, 192
STRIDES = (8, 16)
OUT_DIR = ROOT / "models" / "vigil-synth"


def render_dataset(seeds: range, frames_per_seed: int, step: int, rng: np.random.Generator):
    images, targets = [], []
    for seed in seeds:
        light = float(rng.uniform(0.35, 1.25))
        scene = SyntheticScene(seed, 10.0, SceneOptions(mean_gap_s=2.5, light=lambda _t, f=light: f))
        for index in range(frames_per_seed * step):
            image, truth = scene.render(index)
            if index % step:
                continue
            canvas, lb = letterbox(image, IN_W, IN_H, centre=False)
            boxes = [(LABELS.index(t.label), *(np.array(t.box) * lb.ratio)) for t in truth]
            images.append(canvas)
            targets.append(np.array(boxes, np.float32).reshape(-1, 5))
    return np.stack(images), targets


def build_targets(targets, flip_mask, num_classes):
    """Centre-sampling assignment: cells near a box centre at the level suited to its size."""
    grids = [(IN_H // s, IN_W // s) for s in STRIDES]
    total = sum(h * w for h, w in grids)
    n = len(targets)
    obj = np.zeros((n, total), np.float32)
    cls = np.zeros((n, total, num_classes), np.float32)
    box = np.zeros((n, total, 4), np.float32)
    pos = np.zeros((n, total), bool)
    area = np.full((n, total), np.inf, np.float32)
    for i, tgt in enumerate(targets):
        for row in tgt:
            c, x1, y1, x2, y2 = row
            if flip_mask[i]:
                x1, x2 = IN_W - x2, IN_W - x1
            w, h = x2 - x1, y2 - y1
            if w < 2 or h < 2:
                continue
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            offset = 0
            for (gh, gw), s in zip(grids, STRIDES):
                big = max(w, h)
                suited = (s == 8 and big <= 56) or (s == 16 and big >= 40)
                if suited:
                    radius = 1.5
                    gx0, gx1 = int(max(0, math.floor(cx / s - radius))), int(min(gw - 1, math.ceil(cx / s + radius)))
                    gy0, gy1 = int(max(0, math.floor(cy / s - radius))), int(min(gh - 1, math.ceil(cy / s + radius)))
                    for gy in range(gy0, gy1 + 1):
                        for gx in range(gx0, gx1 + 1):
                            px, py = (gx + 0.5) * s, (gy + 0.5) * s
                            if not (x1 <= px <= x2 and y1 <= py <= y2):
                                continue
                            if abs(px - cx) > radius * s or abs(py - cy) > radius * s:
                                continue
                            k = offset + gy * gw + gx
                            if w * h >= area[i, k]:
                                continue
                            area[i, k] = w * h
                            pos[i, k] = True
                            obj[i, k] = 1.0
                            cls[i, k] = 0
                            cls[i, k, int(c)] = 1.0
                            box[i, k] = (cx / s - gx, cy / s - gy, math.log(w / s), math.log(h / s))
                offset += gh * gw
    return obj, cls, box, pos


def make_model(torch, num_classes):
    nn = torch.nn

    def block(cin, cout, stride=1):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    class TinyDet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(block(3, 12, 2), block(12, 16, 2), block(16, 16))  # /4
            self.c3 = nn.Sequential(block(16, 32, 2), block(32, 32))  # /8
            self.c4 = nn.Sequential(block(32, 48, 2), block(48, 48))  # /16
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.fuse = nn.Sequential(nn.Conv2d(80, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True))
            self.head3 = nn.Sequential(block(32, 32), nn.Conv2d(32, 5 + num_classes, 1))
            self.head4 = nn.Sequential(block(48, 48), nn.Conv2d(48, 5 + num_classes, 1))

        def forward(self, x):
            x = x * (1.0 / 255.0)
            p3 = self.c3(self.stem(x))
            p4 = self.c4(p3)
            f3 = self.fuse(torch.cat([p3, self.up(p4)], 1))
            outs = []
            for head, feat in ((self.head3, f3), (self.head4, p4)):
                o = head(feat)
                n, c, h, w = o.shape
                outs.append(o.view(n, c, h * w).permute(0, 2, 1))
            raw = torch.cat(outs, 1)
            if self.training:
                return raw
            return torch.cat([raw[..., :4], torch.sigmoid(raw[..., 4:])], -1)

    return TinyDet()


def train(args):
    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    images, targets = render_dataset(range(1000, 1000 + args.train_seeds), args.frames_per_seed, 3, rng)
    print(f"rendered {len(images)} training frames in {time.time() - t0:.0f}s", flush=True)
    model = make_model(torch, len(LABELS))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * math.ceil(len(images) / args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    bce = torch.nn.BCEWithLogitsLoss(reduction="none")
    for epoch in range(args.epochs):
        model.train()
        order = rng.permutation(len(images))
        total = 0.0
        for start in range(0, len(order), args.batch):
            idx = order[start : start + args.batch]
            flip = rng.random(len(idx)) < 0.5
            batch = images[idx].copy()
            batch[flip] = batch[flip][:, :, ::-1]
            gain = rng.uniform(0.5, 1.3, (len(idx), 1, 1, 1))
            batch = np.clip(batch.astype(np.float32) * gain + rng.normal(0, 3, batch.shape), 0, 255).astype(np.float32)
            obj, cls, box, pos = build_targets([targets[i] for i in idx], flip, len(LABELS))
            x = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))
            out = model(x)
            obj_t, cls_t, box_t = torch.from_numpy(obj), torch.from_numpy(cls), torch.from_numpy(box)
            pos_t = torch.from_numpy(pos)
            npos = max(1.0, float(pos.sum()))
            loss_obj = bce(out[..., 4], obj_t).sum() / npos
            loss_cls = bce(out[..., 5:][pos_t], cls_t[pos_t]).sum() / npos
            loss_box = torch.nn.functional.smooth_l1_loss(out[..., :4][pos_t], box_t[pos_t], reduction="sum") / npos
            loss = loss_obj + loss_cls + 5.0 * loss_box
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(idx)
        print(f"epoch {epoch + 1}/{args.epochs} loss {total / len(images):.4f} ({time.time() - t0:.0f}s)", flush=True)
    return model


def export(model, path: Path):
    import torch

    model.eval()
    dummy = torch.zeros(1, 3, IN_H, IN_W)
    torch.onnx.export(model, dummy, str(path), input_names=["images"], output_names=["output"], opset_version=17,
                      dynamo=False)
    import onnx

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)


def write_card(path: Path, sha: str):
    card = {
        "name": "vigil-synth",
        "version": "1",
        "description": "Tiny detector trained by models/build_default.py on Vigil's synthetic street scene. "
        "It knows the synthetic people, cars and trucks only; use yolox-nano for real cameras.",
        "license": "Apache-2.0 (weights produced by this project)",
        "input": {"name": "images", "width": IN_W, "height": IN_H, "layout": "NCHW", "color": "BGR",
                  "scale": 1.0, "mean": [0, 0, 0], "std": [1, 1, 1], "letterbox": "top-left", "pad_value": 114},
        "output": {"decoder": "yolox", "strides": list(STRIDES)},
        "labels": LABELS,
        "sha256": sha,
    }
    path.write_text(json.dumps(card, indent=2) + "\n")


def evaluate(onnx_path: Path, seeds: range, frames: int) -> dict:
    from agent.detect import load_detector

    detector = load_detector(onnx_path, score_threshold=0.4, threads=2)
    stats = {label: {"tp": 0, "fp": 0, "fn": 0} for label in LABELS}
    for seed in seeds:
        scene = SyntheticScene(seed, 10.0)
        for index in range(frames):
            image, truth = scene.render(index)
            if index % 5:
                continue
            dets = detector.detect(image)
            used = set()
            for det in sorted(dets, key=lambda d: -d.score):
                best, best_iou = None, 0.5
                for j, t in enumerate(truth):
                    if j in used or t.label != det.label:
                        continue
                    iou = _iou(det.box, t.box)
                    if iou >= best_iou:
                        best, best_iou = j, iou
                if best is None:
                    stats[det.label]["fp"] += 1
                else:
                    used.add(best)
                    stats[det.label]["tp"] += 1
            for j, t in enumerate(truth):
                if j not in used:
                    stats[t.label]["fn"] += 1
    report = {}
    for label, s in stats.items():
        p = s["tp"] / max(1, s["tp"] + s["fp"])
        r = s["tp"] / max(1, s["tp"] + s["fn"])
        report[label] = {**s, "precision": round(p, 3), "recall": round(r, 3)}
    return report


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--train-seeds", type=int, default=40)
    parser.add_argument("--frames-per-seed", type=int, default=90)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--eval-only", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / "vigil-synth.onnx"
    if not args.eval_only:
        model = train(args)
        export(model, onnx_path)
    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    write_card(args.out / "vigil-synth.card.json", sha)
    report = {"held_out_seeds": [1, 20], "frames_per_seed": 300, "every_nth_frame": 5, "iou": 0.5,
              "score_threshold": 0.4, "per_class": evaluate(onnx_path, range(1, 21), 300),
              "frame_size": [WIDTH, HEIGHT], "sha256": sha}
    (args.out / "REPORT.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
