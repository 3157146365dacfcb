#!/usr/bin/env python3
"""Images/s of an ONNX model written by `lbwnet export --onnx` in onnxruntime (CPU).

    scripts/onnx-bench.py MODEL.onnx IMAGES.npz [--threads N] [--repeats R]

IMAGES.npz holds decoded RGB images (uint8 [H, W, 3], any names). After one warm-up pass
over all of them, R timed passes; prints one JSON line: the session's load time in ms
(onnxruntime decodes the packed weights then), the images/s of every pass and their
median, and the threads used (0: onnxruntime's default, one per physical core).
`lbwnet bench detect` runs this next to its own timing.
"""
import argparse
import json
import statistics
import time

import numpy as np
import onnxruntime


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("images")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    archive = np.load(args.images)
    images = [archive[name] for name in sorted(archive.files)]
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    start = time.perf_counter()
    session = onnxruntime.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    load_ms = (time.perf_counter() - start) * 1e3

    def one_pass():
        start = time.perf_counter()
        for image in images:
            session.run(None, {"image": image})
        return len(images) / (time.perf_counter() - start)

    one_pass()
    rates = [one_pass() for _ in range(args.repeats)]
    print(json.dumps({
        "load_ms": load_ms,
        "images_per_s": statistics.median(rates),
        "passes": rates,
        "threads": args.threads,
        "onnxruntime": onnxruntime.__version__,
    }))


if __name__ == "__main__":
    main()
