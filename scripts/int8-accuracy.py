#!/usr/bin/env python3
"""The int8 export's accuracy against the same weights with float activations, beside
onnxruntime's own `quantize_static` of the float export, over trained runs (a sweep's).

For every run: `lbwnet export --onnx` (float activations), `lbwnet export --onnx --int8`
(calibrated on N training images of the run's data set) and scripts/onnx-quantize-static.py on the float export
(the same N images); scripts/onnx-map.py scores the three on the run's test split and
matches the int8 models' detections with the float export's. Runs are grouped by their
cell (the run directory's name, e.g. `w4-lbw-c3.7`); each group reports the mean and the
range of every mAP and of the drops over its runs (seeds). Writes OUT/int8-accuracy.json
and OUT/int8-accuracy.md (atomically) and prints the Markdown table.

    scripts/int8-accuracy.py RUN... --data ROOT --lbwnet BIN --out DIR [--calibration-images 200]
        [--calibration-rule mean-min-max|min-max]

ROOT is the runs' VOC-layout data set (its test split is scored, its trainval images
calibrate onnxruntime's quantizer; `export --int8` reads the run's own config).
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from onnx_common import write_atomic

SCRIPTS = Path(__file__).resolve().parent


def run(command):
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(map(str, command))}: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout


def measure(run_dir, args, work):
    """The three exports of one run, scored; one dict."""
    data = args.data
    float_onnx, int8_onnx, generic = work / "float.onnx", work / "int8.onnx", work / "qs.onnx"
    run([args.lbwnet, "-q", "export", "--run", run_dir, "--onnx", float_onnx])
    run([args.lbwnet, "-q", "export", "--run", run_dir, "--onnx", int8_onnx, "--int8",
         "--calibration-images", args.calibration_images,
         "--calibration-rule", args.calibration_rule])
    run([sys.executable, SCRIPTS / "onnx-quantize-static.py", float_onnx, generic,
         "--calibration", data, "--count", args.calibration_images])
    lines = run([sys.executable, SCRIPTS / "onnx-map.py", float_onnx, int8_onnx, generic,
                 "--data", data, "--lbwnet", args.lbwnet, "--out", work / "map"])
    scored = [json.loads(line) for line in lines.splitlines() if line.strip()]
    float_map, int8, qs = scored
    return {
        "run": str(run_dir),
        "float_activations": float_map["map"],
        "int8": int8["map"],
        "quantize_static": qs["map"],
        "int8_vs_float": int8["vs_first"],
        "quantize_static_vs_float": qs["vs_first"],
        "bytes": {"float": float_onnx.stat().st_size, "int8": int8_onnx.stat().st_size,
                  "quantize_static": generic.stat().st_size},
    }


def summarize(rows):
    def stats(values):
        return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}

    return {
        "runs": len(rows),
        "float_activations": stats([r["float_activations"] for r in rows]),
        "int8": stats([r["int8"] for r in rows]),
        "quantize_static": stats([r["quantize_static"] for r in rows]),
        "int8_drop": stats([r["float_activations"] - r["int8"] for r in rows]),
        "quantize_static_drop": stats([r["float_activations"] - r["quantize_static"] for r in rows]),
        "int8_matched_fraction": stats([r["int8_vs_float"]["matched_fraction"] for r in rows]),
        "int8_mean_iou": stats([r["int8_vs_float"]["mean_iou"] for r in rows]),
    }


def markdown(groups, calibration_images, rule):
    def cell(s, points=False):
        k = 100 if points else 1
        return f"{k * s['mean']:.{2 if points else 4}f} ({k * s['min']:.{2 if points else 4}f} to {k * s['max']:.{2 if points else 4}f})"

    out = [f"mAP (voc07) on the test split, mean (range) over the runs; drops in points; "
           f"calibration {calibration_images} training images for both int8 models "
           f"(ours: {rule}; quantize_static: MinMax).", "",
           "| cell | runs | float activations | int8 (ours) | drop | quantize_static | drop | int8 matched / mean IoU |",
           "|:--|--:|--:|--:|--:|--:|--:|--:|"]
    for name, s in groups.items():
        out.append(
            f"| {name} | {s['runs']} | {cell(s['float_activations'])} | {cell(s['int8'])} | "
            f"{cell(s['int8_drop'], True)} | {cell(s['quantize_static'])} | "
            f"{cell(s['quantize_static_drop'], True)} | "
            f"{s['int8_matched_fraction']['mean']:.3f} / {s['int8_mean_iou']['mean']:.3f} |")
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data", required=True, type=Path, help="the runs' data set")
    parser.add_argument("--lbwnet", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--calibration-images", type=int, default=200)
    parser.add_argument("--calibration-rule", default="mean-min-max",
                        help="export --int8's rule (quantize_static uses MinMax)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for run_dir in args.runs:
        with tempfile.TemporaryDirectory(dir=args.out) as work:
            row = measure(run_dir, args, Path(work))
        print(json.dumps(row), file=sys.stderr)
        rows.append(row)
    groups = {}
    for row in rows:
        groups.setdefault(Path(row["run"]).name, []).append(row)
    summary = {name: summarize(group) for name, group in groups.items()}
    table = markdown(summary, args.calibration_images, args.calibration_rule)
    write_atomic(args.out / "int8-accuracy.json",
                 json.dumps({"runs": rows, "cells": summary,
                             "calibration_images": args.calibration_images,
                             "calibration_rule": args.calibration_rule}, indent=1).encode()
                 + b"\n")
    write_atomic(args.out / "int8-accuracy.md", table.encode())
    print(table)


if __name__ == "__main__":
    main()
