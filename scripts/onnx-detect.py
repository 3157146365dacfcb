#!/usr/bin/env python3
"""Detections of an ONNX model written by `lbwnet export --onnx`, with onnxruntime only.

Prints one JSON line per image, as `lbwnet detect --json` does:
{"path", "width", "height", "detections": [{"class", "score", "box": [x1, y1, x2, y2]}]}
with boxes in the image's own pixels, rounded to 0.01 as lbwnet rounds them. An image is
taken as a viewer shows it: its EXIF orientation (any of the 8) applied, as lbwnet does, so
width, height and boxes are in that frame.

    scripts/onnx-detect.py IMAGE... --model MODEL.onnx [--score-thresh 0.5] [--threads N]
"""
import argparse
import json
import math
import sys

import numpy as np
import onnxruntime
from onnx_common import as_shown
from PIL import Image


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+")
    parser.add_argument("--model", required=True)
    parser.add_argument("--score-thresh", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=0, help="0: onnxruntime's default")
    args = parser.parse_args()

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    # score_thresh is an input with a default (an initializer); onnxruntime warns about
    # that on every load although nothing it would fold depends on it.
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(
            args.model, options, providers=["CPUExecutionProvider"]
        )
        classes = json.loads(session.get_modelmeta().custom_metadata_map["classes"])
    except Exception as err:  # onnxruntime raises its own types for unreadable files
        print(f"error: model {args.model}: {err}", file=sys.stderr)
        return 1
    failed = 0
    for path in args.images:
        try:
            with Image.open(path) as opened:
                opened.load()
                image = np.asarray(as_shown(opened).convert("RGB"))
        except OSError as err:
            print(json.dumps({"path": path, "error": str(err)}, separators=(",", ":")))
            failed += 1
            continue
        boxes, scores, labels = session.run(
            None, {"image": image, "score_thresh": np.array(args.score_thresh, dtype=np.float32)}
        )
        detections = [
            {
                "class": classes[label - 1],
                # The float32 score's shortest form, as lbwnet prints it.
                "score": float(str(score)),
                # Half away from zero, as Rust's round (the values are non-negative).
                "box": [math.floor(v * 100.0 + 0.5) / 100.0 for v in box],
            }
            for box, score, label in zip(boxes.tolist(), scores, labels.tolist())
        ]
        height, width = image.shape[:2]
        print(json.dumps(
            {"path": path, "width": width, "height": height, "detections": detections},
            separators=(",", ":"),
        ))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
