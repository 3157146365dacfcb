#!/usr/bin/env python3
"""Training-step time of torchvision's Faster R-CNN against ours (`lbwnet bench train-step`),
one after the other, same threads, image size, anchors, RPN/RoI settings, float and b-bit LBW.

Run it through scripts/bench-vs-torchvision.sh (it picks the project's torch virtualenv).

Fairness: both sides step at learning rate 0 (SGD, momentum 0.9, weight decay 1e-4, so the
optimizer still does its work), so the model never changes and every step processes the same
proposals and RoIs; with a real learning rate torchvision's randomly initialized RPN
collapses after a couple of updates and its head sees a handful of RoIs instead of 128
(issue 14). The proposals and RoIs of every timed step are printed for both sides.

Ours runs first and reports the model it built (`model_config`, `eval_config`, c and which
layers stay float, from configs/default.yaml, configs/voc07_resnet50.yaml and
configs/voc07_vgg16.yaml with random init); the torchvision model is then built from that
report, so the two never drift apart: the same trunk and box head, anchors, RPN conv width,
pre/post-NMS top-n (training and test), NMS thresholds, RPN minimum box size, sampler sizes
and fractions, IoU thresholds, RoIAlign output size and sampling ratio, test-time score
threshold, NMS and detections per image. Both sides are called on an already-sized image
(no resize, no padding), one image with three boxes. LBW on the torchvision side is a
parametrization of every quantized conv and linear weight: forward W + (Q(W) - W).detach(),
Q(W) = alpha * nearest power-of-two level, alpha = c * mean|W| (src/quant/lbw.rs,
src/quant/levels.rs).

After the training steps each side times test-time forward passes (inference: RPN, box
head, NMS) on the same image, with the RPN keeping its post_nms_top_n_test best boxes
without NMS on both sides, so each scores exactly that many proposals (random weights would
otherwise leave different numbers after NMS), and reports its process's peak resident memory.
The torchvision side runs each model in its own worker process so that figure covers that
model only, as ours does (both hold the float and the quantized model with their optimizer
state). As an evaluation does, both sides compute each quantized layer's Q(W) once for all
the inference passes (the weights do not change): ours fills its layers' slots with one pass
(`QuantRegistry::quantize_frozen`), torchvision's side runs them under
`parametrize.cached()`; neither pass is timed (`lbwnet bench inference` times ours).
"""
import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize
import torchvision
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

NUM_CLASSES = 20

# The config each model is read from (ours reports the architecture it built from it).
MODELS = OrderedDict(
    small=dict(config="configs/default.yaml", set=[], size=(240, 320)),
    resnet50=dict(config="configs/voc07_resnet50.yaml", set=["model.backbone_weights=null"], size=(600, 1000)),
    vgg16=dict(config="configs/voc07_vgg16.yaml", set=["model.backbone_weights=null"], size=(600, 1000)),
)
NAMES = {"small": "small", "resnet50": "resnet50-c4", "vgg16": "vgg16"}


class Lbw(nn.Module):
    """LBW quantize-on-forward with a straight-through gradient, like src/nn/qlayers.rs."""

    def __init__(self, bits, c):
        super().__init__()
        self.n = 1 << (bits - 2)
        self.c = c

    def forward(self, w):
        with torch.no_grad():
            n = self.n
            alpha = (w.abs().sum(dtype=torch.float64) * (self.c / w.numel())).float()
            r = w.abs() / torch.where(alpha > 0, alpha, torch.ones_like(alpha))
            mantissa, exponent = torch.frexp(r)
            index = (exponent + (n - 1) + (mantissa >= 0.75).int()).clamp(1, n)
            index = index * (r >= 2.0 ** (-n))
            q = torch.where(index > 0, alpha * torch.exp2((index - n).float()), torch.zeros_like(w))
            q = torch.where(w < 0, -q, q)
        return w + (q - w).detach()


class RpnHead(nn.Module):
    """Our RPN head: a 3x3 conv of `channels` (torchvision's keeps the input width), ReLU,
    1x1 objectness and box predictors, N(0, 0.01) init."""

    def __init__(self, in_channels, channels, num_anchors):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(channels, 4 * num_anchors, 1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features):
        logits, deltas = [], []
        for f in features:
            h = torch.relu(self.conv(f))
            logits.append(self.cls_logits(h))
            deltas.append(self.bbox_pred(h))
        return logits, deltas


def small_parts(width=16, head_hidden=256):
    """src/nn/backbones/small.rs: conv3x3 (no bias) - GroupNorm - ReLU blocks."""
    layers, c_in = [], 3
    for blocks, mult in zip([1, 1, 1, 2], [1, 2, 4, 8]):
        c_out = width * mult
        for b in range(blocks):
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=2 if b == 0 else 1, padding=1, bias=False),
                nn.GroupNorm(math.gcd(8, c_out), c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
    head = nn.Sequential(
        nn.Flatten(),
        nn.Linear(c_in * 49, head_hidden),
        nn.ReLU(inplace=True),
        nn.Linear(head_hidden, head_hidden),
        nn.ReLU(inplace=True),
    )
    return nn.Sequential(*layers), c_in, head, head_hidden, 7


def resnet50_parts():
    """ResNet-50 C4: conv1..layer3 trunk, layer4 + mean as the box head, frozen BN."""
    r = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    trunk = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3)
    head = nn.Sequential(r.layer4, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return trunk, 1024, head, 2048, 14


def vgg16_parts():
    """VGG-16 without the last max-pool; fc6/fc7 (with dropout) as the box head."""
    v = torchvision.models.vgg16(weights=None)
    trunk = v.features[:30]
    head = nn.Sequential(nn.Flatten(), *list(v.classifier.children())[:6])
    return trunk, 512, head, 4096, 7


class Detector(nn.Module):
    """torchvision's RPN and RoIHeads around our trunk and head, with ours' settings."""

    def __init__(self, name, model, eval_cfg):
        super().__init__()
        rpn_cfg, roi = model["rpn"], model["roi"]
        if name == "small":
            parts = small_parts(model["small_width"], roi["head_hidden"])
        else:
            parts = {"resnet50": resnet50_parts, "vgg16": vgg16_parts}[name]()
        trunk, trunk_channels, head, head_dim, pool = parts
        self.trunk = trunk
        sizes, ratios = tuple(model["anchor_sizes"]), tuple(model["anchor_ratios"])
        anchors = AnchorGenerator(sizes=(sizes,), aspect_ratios=(ratios,))
        self.rpn = RegionProposalNetwork(
            anchors,
            RpnHead(trunk_channels, rpn_cfg["channels"], len(sizes) * len(ratios)),
            fg_iou_thresh=rpn_cfg["fg_iou"],
            bg_iou_thresh=rpn_cfg["bg_iou"],
            batch_size_per_image=rpn_cfg["batch_size_per_image"],
            positive_fraction=rpn_cfg["positive_fraction"],
            pre_nms_top_n=dict(training=rpn_cfg["pre_nms_top_n_train"], testing=rpn_cfg["pre_nms_top_n_test"]),
            post_nms_top_n=dict(training=rpn_cfg["post_nms_top_n_train"], testing=rpn_cfg["post_nms_top_n_test"]),
            nms_thresh=rpn_cfg["nms_thresh"],
        )
        self.rpn.min_size = rpn_cfg["min_size"]  # ours: model.rpn.min_size at scale 1
        if roi["pooler"] != "roi_align" or roi["aligned"]:
            sys.exit(f"{name}: only RoIAlign with aligned=false has a torchvision counterpart here")
        self.roi_heads = RoIHeads(
            MultiScaleRoIAlign(["0"], pool, roi["sampling_ratio"]),
            head,
            FastRCNNPredictor(head_dim, NUM_CLASSES + 1),
            fg_iou_thresh=roi["fg_iou"],
            bg_iou_thresh=roi["bg_iou_hi"],
            batch_size_per_image=roi["batch_size_per_image"],
            positive_fraction=roi["positive_fraction"],
            bbox_reg_weights=tuple(roi["box_weights"]),
            score_thresh=eval_cfg["score_thresh"],
            nms_thresh=eval_cfg["nms_thresh"],
            detections_per_img=eval_cfg["detections_per_image"],
        )
        self.last_rois = 0
        select = self.roi_heads.select_training_samples

        def counting_select(proposals, targets):
            out = select(proposals, targets)
            self.last_rois = sum(len(p) for p in out[0])
            return out

        self.roi_heads.select_training_samples = counting_select

    def losses(self, images, targets):
        features = OrderedDict([("0", self.trunk(images))])
        image_list = ImageList(images, [tuple(images.shape[-2:])] * images.shape[0])
        proposals, rpn_losses = self.rpn(image_list, features, targets)
        self.last_proposals = sum(len(p) for p in proposals)
        _, head_losses = self.roi_heads(features, proposals, image_list.image_sizes, targets)
        return sum(rpn_losses.values()) + sum(head_losses.values())

    def detect(self, images):
        features = OrderedDict([("0", self.trunk(images))])
        image_list = ImageList(images, [tuple(images.shape[-2:])] * images.shape[0])
        proposals, _ = self.rpn(image_list, features)
        self.last_proposals = sum(len(p) for p in proposals)
        detections, _ = self.roi_heads(features, proposals, image_list.image_sizes)
        return detections


def quantize_all(model, bits, c, float_first_conv, float_predictors):
    """LBW on every conv and linear weight, but those ours keeps in float."""
    first_conv = next(m for m in model.trunk.modules() if isinstance(m, nn.Conv2d))
    predictor = model.roi_heads.box_predictor
    for module in list(model.modules()):
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        if float_first_conv and module is first_conv:
            continue
        if float_predictors and module in (predictor.cls_score, predictor.bbox_pred):
            continue
        parametrize.register_parametrization(module, "weight", Lbw(bits, c))


def synthetic_batch(height, width, device):
    """The same image size and boxes as src/bench/train_step.rs (the pixels differ)."""
    torch.manual_seed(0)
    image = torch.randn(1, 3, height, width, device=device)
    h, w = float(height), float(width)
    boxes = torch.tensor(
        [
            [0.1 * w, 0.1 * h, 0.4 * w, 0.5 * h],
            [0.5 * w, 0.2 * h, 0.9 * w, 0.7 * h],
            [0.3 * w, 0.6 * h, 0.6 * w, 0.95 * h],
        ],
        device=device,
    )
    labels = torch.tensor([1, 2, 3], device=device)
    return image, [dict(boxes=boxes, labels=labels)]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_torchvision(name, ours, repeats, device):
    """Training steps, then inference passes, of the float and the quantized model."""
    height, width = ours["image"]
    images, targets = synthetic_batch(height, width, device)
    runs = []
    for b in (32, ours["bits"]):
        torch.manual_seed(1)
        model = Detector(name, ours["model_config"], ours["eval_config"]).to(device)
        if b < 32:
            quantize_all(model, b, ours["c"], ours["float_first_conv"], ours["float_predictors"])
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=1e-4)
        runs.append((model, opt))
    times, proposals, rois = [[], []], [[], []], [[], []]
    for round_ in range(repeats + 1):
        for i, (model, opt) in enumerate(runs):
            torch.manual_seed(round_)
            start = time.perf_counter()
            loss = model.losses(images, targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sync(device)
            if round_ > 0:
                times[i].append((time.perf_counter() - start) * 1e3)
                proposals[i].append(model.last_proposals)
                rois[i].append(model.last_rois)
    inference, inference_proposals = [[], []], [[], []]
    for model, _ in runs:
        model.eval()
        # As ours does for timing: no RPN NMS and pre-NMS top-n = post-NMS top-n, so both
        # sides score exactly post_nms_top_n_test proposals whatever their random weights.
        model.rpn.nms_thresh = 1.0
        model.rpn._pre_nms_top_n["testing"] = model.rpn._post_nms_top_n["testing"]
        model.rpn.min_size = 0.0
    # Q(W) once for all the passes, as an evaluation of fixed weights computes it.
    with torch.no_grad(), parametrize.cached():
        for round_ in range(repeats + 1):
            for i, (model, _) in enumerate(runs):
                start = time.perf_counter()
                model.detect(images)
                sync(device)
                if round_ > 0:
                    inference[i].append((time.perf_counter() - start) * 1e3)
                    inference_proposals[i].append(model.last_proposals)
    return dict(
        float_steps_ms=times[0],
        quantized_steps_ms=times[1],
        float_proposals=proposals[0],
        quantized_proposals=proposals[1],
        float_rois=rois[0],
        quantized_rois=rois[1],
        float_inference_ms=inference[0],
        quantized_inference_ms=inference[1],
        float_inference_proposals=inference_proposals[0],
        quantized_inference_proposals=inference_proposals[1],
        # Linux reports KiB.
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    )


def torchvision_worker(args):
    """`--worker`: one model's torchvision side in a fresh process; JSON in, JSON out."""
    job = json.load(sys.stdin)
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    result = bench_torchvision(job["name"], job["ours"], job["repeats"], torch.device(job["device"]))
    print(json.dumps(result))


def run_torchvision_worker(name, ours, repeats, threads, device):
    job = dict(name=name, ours=ours, repeats=repeats, threads=threads, device=device.type)
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker"],
        input=json.dumps(job), check=True, stdout=subprocess.PIPE, text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def bench_ours(binary, spec, bits, repeats, threads, device):
    height, width = spec["size"]
    cmd = [binary, "bench", "train-step", "--config", spec["config"]]
    for s in spec["set"]:
        cmd += ["--set", s]
    cmd += [
        "--size", f"{height}x{width}", "--bits", str(bits), "--repeats", str(repeats),
        "--threads", str(threads), "--lr", "0", "--device", device.type, "--json",
    ]
    print("  ours: " + " ".join(cmd), flush=True)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def print_side_rows(kinds, tv, ours, key, convert, fmt, count_keys):
    """One Markdown row per bit-width and side: the median, min and max of `key` (after
    `convert`, e.g. ms to images/s) and the distinct per-step counts under `count_keys`."""
    for kind, label in kinds:
        for side, r in (("torchvision", tv), ("ours", ours)):
            values = sorted(convert(v) for v in r[f"{kind}_{key}"])
            med, lo, hi = statistics.median(values), values[0], values[-1]
            counts = " | ".join(str(sorted(set(r[f"{kind}_{c}"]))) for c in count_keys)
            print(f"| {side} | {label} | {med:{fmt}} | {lo:{fmt}} | {hi:{fmt}} | {counts} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="small,resnet50,vgg16", help="comma-separated: small, resnet50, vgg16")
    parser.add_argument("--quick", action="store_true", help="only the small model")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per model and side at 600x1000")
    parser.add_argument("--small-repeats", type=int, default=10, help="timed steps of the small model")
    parser.add_argument("--bits", type=int, default=6)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads on both sides (default: torch's choice)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--bin", default="target/release/lbwnet")
    parser.add_argument("--json", metavar="FILE", help="also write every measurement here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return torchvision_worker(args)
    models = ["small"] if args.quick else [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            parser.error(f"--models: unknown model {m!r}; use small, resnet50, vgg16")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, {device}, "
        f"{threads} thread(s), lr 0, one image with 3 boxes, {args.bits}-bit LBW vs float",
        flush=True,
    )
    results, summary = [], []
    for name in models:
        spec = MODELS[name]
        repeats = args.small_repeats if name == "small" else args.repeats
        h, w = spec["size"]
        print(f"\n== {NAMES[name]} {h}x{w}, {repeats} timed steps per side and bit-width (after one warm-up)", flush=True)
        ours = bench_ours(args.bin, spec, args.bits, repeats, threads, device)
        tv = run_torchvision_worker(name, ours, repeats, threads, device)
        if ours["threads"] != threads:
            print(f"  WARNING: ours ran with {ours['threads']} threads, torchvision with {threads}")
        print("training step (forward, backward, SGD):")
        print("| side | weights | median ms | min | max | proposals/step | RoIs/step |")
        print("|:--|:--|--:|--:|--:|:--|:--|")
        row = dict(model=NAMES[name], size=[h, w], threads=threads, repeats=repeats, torchvision=tv, ours=ours)
        kinds = (("float", "float"), ("quantized", f"{args.bits}-bit"))
        print_side_rows(kinds, tv, ours, "steps_ms", lambda ms: ms, ".1f", ("proposals", "rois"))
        for kind, label in kinds:
            ratio = statistics.median(ours[f"{kind}_steps_ms"]) / statistics.median(tv[f"{kind}_steps_ms"])
            equal = ours[f"{kind}_rois"] == tv[f"{kind}_rois"]
            infer_ratio = statistics.median(ours[f"{kind}_inference_ms"]) / statistics.median(tv[f"{kind}_inference_ms"])
            row[f"{kind}_ratio"] = ratio
            row[f"{kind}_equal_rois"] = equal
            row[f"{kind}_inference_ratio"] = infer_ratio
            summary.append((NAMES[name], f"{h}x{w}", label, ratio, equal, infer_ratio))
        print("inference (test-time forward: RPN, head, NMS), images/s:")
        print("| side | weights | median images/s | min | max | proposals scored |")
        print("|:--|:--|--:|--:|--:|:--|")
        print_side_rows(kinds, tv, ours, "inference_ms", lambda ms: 1e3 / ms, ".2f", ("inference_proposals",))
        mem = lambda r: f"{r['peak_rss_mib']:.0f} MiB" if r.get("peak_rss_mib") else "n/a"
        print(
            f"peak resident memory of the process (float + {args.bits}-bit model, optimizer state, "
            f"all steps): torchvision {mem(tv)}, ours {mem(ours)}"
        )
        print(
            f"  ours/torchvision step time: float {row['float_ratio']:.3f}, {args.bits}-bit {row['quantized_ratio']:.3f}; "
            f"quantization overhead: ours {ours['ratio']:.3f}x, torchvision "
            f"{statistics.median(tv['quantized_steps_ms']) / statistics.median(tv['float_steps_ms']):.3f}x",
            flush=True,
        )
        results.append(row)
    print(f"\n== summary ({device}, {threads} thread(s)): ours/torchvision median step time (< 1: ours faster)")
    print("| model | size | weights | step time ours/torchvision | same RoIs every step | inference time ours/torchvision |")
    print("|:--|:--|:--|--:|:--|--:|")
    for model, size, label, ratio, equal, infer in summary:
        print(f"| {model} | {size} | {label} | {ratio:.3f} | {'yes' if equal else 'NO'} | {infer:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if not all(e for _, _, _, _, e, _ in summary):
        print("WARNING: the two sides processed different numbers of RoIs; the ratio is not like for like")


if __name__ == "__main__":
    main()
