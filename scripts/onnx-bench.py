#!/usr/bin/env python3
"""Images/s of an ONNX model written by `lbwnet export --onnx` in onnxruntime (CPU).

    scripts/onnx-bench.py MODEL.onnx IMAGES.npz [--threads N] [--repeats R] [--output NAME]
        [--against MODEL2.onnx ...]

IMAGES.npz holds decoded RGB images (uint8 [H, W, 3], any names). After one warm-up pass
over all of them, R timed passes; prints one JSON line: the session's load time in ms
(onnxruntime decodes the packed weights then), the images/s of every pass and their
median, and the threads used (0: onnxruntime's default, one per physical core). With
--output, only the subgraph from `image` to that named value is run (e.g. `features`: the
backbone, resize and normalization included). With --against, the models
are timed in turn, pass by pass, and one line is printed per model in the order given.
`lbwnet bench detect` runs this next to its own timing.
"""
import argparse
import json
import statistics
import time

import numpy as np
import onnx
import onnxruntime


def up_to(model, output):
    """`model` cut to the nodes, initializers and inputs that `output` depends on, with
    `output` its only output (onnxruntime runs every node of a graph, wanted or not)."""
    graph = model.graph
    needed = {output}
    kept = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    if output not in {name for node in kept for name in node.output}:
        raise SystemExit(f"error: {output} is not a value of the model")
    kept.reverse()
    initializers = [t for t in graph.initializer if t.name in needed]
    inputs = [i for i in graph.input if i.name in needed]
    del graph.node[:], graph.initializer[:], graph.input[:], graph.output[:]
    graph.node.extend(kept)
    graph.initializer.extend(initializers)
    graph.input.extend(inputs)
    graph.output.append(onnx.ValueInfoProto(name=output))
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("images")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", help="time up to this named value only")
    parser.add_argument("--against", nargs="*", default=[],
                        help="more models, timed pass for pass in turn with the first")
    args = parser.parse_args()

    archive = np.load(args.images)
    images = [archive[name] for name in sorted(archive.files)]
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    fetch = [args.output] if args.output else None

    def load(path):
        start = time.perf_counter()
        model = path
        if args.output:
            model = up_to(onnx.load(path), args.output).SerializeToString()
        session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        return session, (time.perf_counter() - start) * 1e3

    def one_pass(session):
        start = time.perf_counter()
        for image in images:
            session.run(fetch, {"image": image})
        return len(images) / (time.perf_counter() - start)

    sessions = [load(path) for path in [args.model, *args.against]]
    for session, _ in sessions:
        one_pass(session)
    # The models alternate pass by pass, so that a shared machine's slow spells fall on
    # all of them alike.
    rates = [[] for _ in sessions]
    for _ in range(args.repeats):
        for (session, _), mine in zip(sessions, rates):
            mine.append(one_pass(session))
    for (_, load_ms), mine in zip(sessions, rates):
        print(json.dumps({
            "load_ms": load_ms,
            "images_per_s": statistics.median(mine),
            "passes": mine,
            "threads": args.threads,
            "onnxruntime": onnxruntime.__version__,
        }))


if __name__ == "__main__":
    main()
