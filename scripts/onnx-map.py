#!/usr/bin/env python3
"""mAP of ONNX detectors (`lbwnet export --onnx`, or a requantized copy) in onnxruntime, scored by lbwnet.

For each model: onnxruntime (CPU) runs over the split's images of a VOC-layout data set
(`ImageSets/Main/<split>.txt`, `JPEGImages/<id>.jpg`), read as onnx-detect.py reads them
(RGB, EXIF orientation applied) with the model's own default score_thresh; the detections
go to `OUT/<model file stem>/comp4_det_<split>_<class>.txt` as `lbwnet eval` writes them
(VOC 1-based pixels clamped to the image, score to 3 decimals, coordinates to 1), and
`lbwnet eval-dets` scores them. With --limit only the split's first N images are run and
scored (through a temporary root whose split lists just those).

One JSON line per model: {"model", "map", "images", "detections", "seconds"} (seconds:
onnxruntime's time over the images, decoding excluded). From the second model on, the
line also compares its detections with the FIRST model's under "vs_first": per image,
same-class pairs with IoU >= 0.5 (boxes as the models output them) matched one-to-one,
greedily by descending IoU; "matched" pairs, "matched_fraction" (matched / the larger
count), "matched_of_first", "matched_of_this", and over the matched pairs "mean_iou" and
"mean_abs_score_diff" (null where there is nothing to divide by).

    scripts/onnx-map.py MODEL.onnx [MODEL2.onnx ...] --data ROOT --lbwnet BIN --out DIR
        [--split test] [--limit N] [--threads N] [--metric voc07] [--json-out FILE]
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
from onnx_common import read_ids, read_rgb, write_atomic

IOU_THRESH = 0.5


def detect(model, root, ids, threads):
    """The model's classes, its (boxes, scores, labels, (width, height)) per image and the
    seconds onnxruntime took over them."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    # score_thresh is an input with a default; onnxruntime warns about it on every load.
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    classes = json.loads(session.get_modelmeta().custom_metadata_map["classes"])
    found, seconds = [], 0.0
    for image_id in ids:
        image = read_rgb(root / "JPEGImages" / f"{image_id}.jpg")
        start = time.perf_counter()
        boxes, scores, labels = session.run(None, {"image": image})
        seconds += time.perf_counter() - start
        found.append((boxes, scores, labels, (image.shape[1], image.shape[0])))
    return classes, found, seconds


def write_comp4(folder, split, classes, ids, found):
    """One file per class, lines in image order as `lbwnet eval` writes them."""
    lines = [[] for _ in classes]
    for image_id, (boxes, scores, labels, (width, height)) in zip(ids, found):
        limits = np.array([width, height, width, height], dtype=np.float64)
        voc = np.clip(boxes.astype(np.float64) + 1.0, 1.0, limits)
        for box, score, label in zip(voc, scores.astype(np.float64), labels):
            x1, y1, x2, y2 = box
            lines[label - 1].append(f"{image_id} {score:.3f} {x1:.1f} {y1:.1f} {x2:.1f} {y2:.1f}\n")
    folder.mkdir(parents=True, exist_ok=True)
    for class_name, text in zip(classes, lines):
        write_atomic(folder / f"comp4_det_{split}_{class_name}.txt", "".join(text).encode())


def iou_matrix(a, b):
    """IoU of every box in a [N, 4] with every box in b [M, 4] (x1, y1, x2, y2)."""
    a, b = a.astype(np.float64)[:, None], b.astype(np.float64)[None]
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = width * height
    union = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) \
        + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def ratio(num, den):
    return num / den if den else None


def compare(first, this):
    """The "vs_first" figures of `this` model's detections against the `first` model's."""
    ious, score_diffs, count_first, count_this = [], [], 0, 0
    for (boxes_a, scores_a, labels_a, _), (boxes_b, scores_b, labels_b, _) in zip(first, this):
        count_first += len(labels_a)
        count_this += len(labels_b)
        iou = iou_matrix(boxes_a, boxes_b)
        iou[labels_a[:, None] != labels_b[None]] = 0.0
        rows, cols = np.nonzero(iou >= IOU_THRESH)
        used_a, used_b = set(), set()
        for k in np.argsort(-iou[rows, cols], kind="stable"):
            i, j = rows[k], cols[k]
            if i in used_a or j in used_b:
                continue
            used_a.add(i)
            used_b.add(j)
            ious.append(iou[i, j])
            score_diffs.append(abs(float(scores_a[i]) - float(scores_b[j])))
    matched = len(ious)
    return {
        "matched": matched,
        "matched_fraction": ratio(matched, max(count_first, count_this)),
        "matched_of_first": ratio(matched, count_first),
        "matched_of_this": ratio(matched, count_this),
        "mean_iou": float(np.mean(ious)) if ious else None,
        "mean_abs_score_diff": float(np.mean(score_diffs)) if ious else None,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--data", required=True, type=Path, help="VOC-layout root")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, help="only the split's first N images")
    parser.add_argument("--threads", type=int, default=0, help="0: onnxruntime's default")
    parser.add_argument("--metric", default="voc07", choices=["voc07", "area", "coco"],
                        help="eval-dets' --metric")
    parser.add_argument("--lbwnet", required=True, help="the lbwnet binary (eval-dets)")
    parser.add_argument("--out", required=True, type=Path,
                        help="comp4 files go to OUT/<model file stem>/")
    parser.add_argument("--json-out", type=Path, help="also write every result here")
    args = parser.parse_args()
    stems = [Path(model).stem for model in args.models]
    if len(set(stems)) != len(stems):
        parser.error(f"two models share a file stem (their comp4 folder): {stems}")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")

    labels_file = args.data / "labels.txt"
    data_classes = None
    if labels_file.exists():
        text = labels_file.read_text(encoding="utf-8-sig")
        data_classes = [line.strip() for line in text.splitlines() if line.strip()]
    all_ids = read_ids(args.data, args.split)
    ids = all_ids[: args.limit]
    results, first, first_classes = [], None, None
    with tempfile.TemporaryDirectory() as work:
        scored_root = args.data
        if len(ids) < len(all_ids):
            # eval-dets scores every image its split lists: a root listing just these.
            scored_root = Path(work)
            (scored_root / "ImageSets/Main").mkdir(parents=True)
            (scored_root / "ImageSets/Main" / f"{args.split}.txt").write_text(
                "".join(f"{image_id}\n" for image_id in ids))
            for name in ["Annotations", "labels.txt"]:
                if (args.data / name).exists():
                    (scored_root / name).symlink_to((args.data / name).resolve())
        for model, stem in zip(args.models, stems):
            classes, found, seconds = detect(model, args.data, ids, args.threads)
            if data_classes is not None and classes != data_classes:
                print(f"error: {model}'s classes {classes} are not {labels_file}'s {data_classes}",
                      file=sys.stderr)
                return 1
            dets = args.out / stem
            write_comp4(dets, args.split, classes, ids, found)
            scored = subprocess.run(
                [args.lbwnet, "-q", "eval-dets", "--data", str(scored_root),
                 "--split", args.split, "--dets", str(dets), "--metric", args.metric, "--json"],
                capture_output=True, text=True,
            )
            if scored.returncode != 0:
                print(f"error: eval-dets on {dets}:\n{scored.stderr}", file=sys.stderr)
                return 1
            result = {
                "model": model,
                "map": json.loads(scored.stdout)["map"],
                "images": len(ids),
                "detections": sum(len(labels) for _, _, labels, _ in found),
                "seconds": round(seconds, 3),
            }
            if first is None:
                first, first_classes = found, classes
            elif classes != first_classes:
                print(f"error: {model}'s classes differ from {args.models[0]}'s", file=sys.stderr)
                return 1
            else:
                result["vs_first"] = compare(first, found)
            results.append(result)
            print(json.dumps(result), flush=True)
    if args.json_out:
        summary = {"data": str(args.data), "split": args.split, "metric": args.metric,
                   "results": results}
        write_atomic(args.json_out, (json.dumps(summary, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
