#!/usr/bin/env python3
"""onnxruntime's own static int8 quantization of a float model written by `lbwnet export --onnx`.

The generic route a user of onnxruntime would take, to compare with `export --onnx --int8`:

1. fold the graph's constants in an onnxruntime session (`ORT_ENABLE_BASIC`, the result
   saved through `optimized_model_filepath`): the export decodes its packed low-bit weights
   in-graph, folding leaves them as the plain float initializers quantize_static looks for;
2. `onnxruntime.quantization.quantize_static`: QDQ format, uint8 activations, int8 weights
   per output channel, Conv/Gemm/MatMul only, MinMax calibration on N images taken evenly
   spaced (so deterministically) from the calibration set.

The calibration set is every argument of --calibration in order: an image file stands for
itself, a VOC-layout root for `ImageSets/Main/trainval.txt`'s `JPEGImages/<id>.jpg`. Images
are fed as onnx-detect.py feeds them: decoded RGB uint8 [H, W, 3], EXIF orientation applied;
`score_thresh` keeps its default. The graph's NonMaxSuppression, TopK, RoiAlign and
data-dependent shapes need no extra options: calibration only reads the tensors around the
quantized ops, and onnxruntime's QDQ fusion turns each DequantizeLinear → Conv/Gemm →
QuantizeLinear group into QLinearConv / QGemm when the output is loaded. The warning that
asks for `quant_pre_process` first can be ignored: the folding above is its optimization
step, and the model quantizes and runs without its shape inference.

The output keeps the float model's metadata (classes, eval settings), so onnx-detect.py,
onnx-bench.py and onnx-map.py run it as they run the float export. It is written
atomically; one JSON line follows: {"out", "bytes", "calibration_images", "seconds"}.

    scripts/onnx-quantize-static.py FLOAT.onnx OUT.onnx --calibration DIR_OR_IMAGE... [--count 100]
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import onnx
import onnxruntime
from google.protobuf.message import DecodeError
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnx_common import read_ids, read_rgb, write_atomic


def calibration_paths(sources, count):
    """`count` images evenly spaced over every source's images in order (all when fewer)."""
    paths = []
    for source in map(Path, sources):
        if source.is_dir():
            ids = read_ids(source, "trainval")
            paths.extend(source / "JPEGImages" / f"{image_id}.jpg" for image_id in ids)
        else:
            paths.append(source)
    if not paths:
        raise ValueError("no calibration images")
    if count < len(paths):
        paths = [paths[i * len(paths) // count] for i in range(count)]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise ValueError(f"calibration images not found: {missing}")
    return paths


class Images(CalibrationDataReader):
    """Feeds the model's `image` input one calibration image at a time."""

    def __init__(self, paths):
        self.paths = iter(paths)

    def get_next(self):
        path = next(self.paths, None)
        return None if path is None else {"image": read_rgb(path)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="float model from `lbwnet export --onnx`")
    parser.add_argument("out", help="quantized model to write")
    parser.add_argument("--calibration", nargs="+", required=True,
                        help="image files and/or VOC-layout roots (their trainval split)")
    parser.add_argument("--count", type=int, default=100, help="calibration images")
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be at least 1")

    start = time.perf_counter()
    try:
        paths = calibration_paths(args.calibration, args.count)
        metadata = onnx.load(args.model, load_external_data=False).metadata_props
    except (OSError, ValueError, DecodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as work:
        folded = os.path.join(work, "folded.onnx")
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = folded
        # score_thresh is an input with a default; onnxruntime warns about it on every load.
        options.log_severity_level = 3
        onnxruntime.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
        quantized = os.path.join(work, "quantized.onnx")
        quantize_static(
            folded,
            quantized,
            Images(paths),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv", "Gemm", "MatMul"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        model = onnx.load(quantized)
        del model.metadata_props[:]
        model.metadata_props.extend(metadata)
        write_atomic(out, model.SerializeToString())
    print(json.dumps({
        "out": str(out),
        "bytes": out.stat().st_size,
        "calibration_images": len(paths),
        "seconds": round(time.perf_counter() - start, 3),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
