#!/usr/bin/env python3
"""Checks of an ONNX model written by `lbwnet export --onnx`, run by tests/onnx_export.rs
through the project's Python environment (onnx, onnxruntime, numpy).

    onnx_check.py model M.onnx --lbw-bytes N --lbw-float-bytes N
        the ONNX checker (full_check) and the size rules; prints a JSON summary
    onnx_check.py ops M.onnx FIXTURES_DIR
        onnxruntime's RoiAlign / MaxRoiPool / NonMaxSuppression, with the attributes the
        exported graph uses, against the torchvision fixtures
    onnx_check.py stages M.onnx STAGES.npz IMAGE
        the graph fed lbwnet's own intermediates (STAGES.npz, written by the test) stage by
        stage, and its decoded weights against lbwnet's Q(W) bit for bit

Every failed check raises, so the exit status is non-zero and the message says which.
"""
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


def session(model):
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def check_model(args):
    path, lbw_bytes, lbw_float_bytes = args[0], int(args[2]), int(args[4])
    onnx.checker.check_model(path, full_check=True)
    model = onnx.load(path)
    file_bytes = os.path.getsize(path)
    float_bytes = sum(
        numpy_helper.to_array(t).nbytes for t in model.graph.initializer if t.data_type in FLOAT_TYPES
    )
    limit = lbw_float_bytes + 65536
    assert float_bytes <= limit, f"float initializers {float_bytes} B > {limit} B"
    assert file_bytes <= 1.15 * lbw_bytes, f"file {file_bytes} B > 1.15 x the .lbw's {lbw_bytes} B"
    print(json.dumps({
        "file_bytes": file_bytes,
        "float_initializer_bytes": float_bytes,
        "file_over_lbw": file_bytes / lbw_bytes,
        "operators": sorted({n.op_type for n in model.graph.node}),
    }))


def array(entry, dtype=np.float32):
    return np.asarray(entry["data"], dtype=dtype).reshape(entry["shape"])


def attributes(model, op):
    nodes = [n for n in model.graph.node if n.op_type == op]
    return {a.name: helper.get_attribute_value(a) for a in nodes[0].attribute} if nodes else None


def single_node(op, inputs, outputs, attrs):
    node = helper.make_node(op, [name for name, _, _ in inputs], [name for name, _ in outputs], **attrs)
    graph = helper.make_graph(
        [node],
        op,
        [helper.make_tensor_value_info(name, t, shape) for name, t, shape in inputs],
        [helper.make_tensor_value_info(name, t, None) for name, t in outputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return session(model)


def check_ops(args):
    model, fixtures = onnx.load(args[0]), args[1]
    load = lambda name: json.load(open(os.path.join(fixtures, name)))
    report = {}
    align = attributes(model, "RoiAlign")
    if align is not None:
        f = load("roi_align.json")
        x, rois = array(f["input"]), array(f["rois"])
        mode = align["coordinate_transformation_mode"].decode()
        for case in f["cases"]:
            # The exported mode is torchvision's `aligned` flag; the rest varies by case.
            if (mode == "half_pixel") != case["aligned"]:
                continue
            oh, ow = case["output_size"]
            run = single_node(
                "RoiAlign",
                [("x", TensorProto.FLOAT, x.shape), ("rois", TensorProto.FLOAT, [None, 4]),
                 ("batch", TensorProto.INT64, [None])],
                [("y", TensorProto.FLOAT)],
                dict(mode=align["mode"].decode(), coordinate_transformation_mode=mode,
                     output_height=oh, output_width=ow, sampling_ratio=case["sampling_ratio"],
                     spatial_scale=case["spatial_scale"]),
            )
            (y,) = run.run(None, {"x": x, "rois": rois[:, 1:].copy(), "batch": rois[:, 0].astype(np.int64)})
            key = f"roi_align {mode} {oh}x{ow} sampling {case['sampling_ratio']}"
            report[key] = relative(key, y, array(case["output"], np.float64), 0.0, 1e-5)
    pool = attributes(model, "MaxRoiPool")
    if pool is not None:
        f = load("roi_pool.json")
        x, rois = array(f["input"]), array(f["rois"])
        for case in f["cases"]:
            run = single_node(
                "MaxRoiPool",
                [("x", TensorProto.FLOAT, x.shape), ("rois", TensorProto.FLOAT, [None, 5])],
                [("y", TensorProto.FLOAT)],
                dict(pooled_shape=case["output_size"], spatial_scale=case["spatial_scale"]),
            )
            (y,) = run.run(None, {"x": x, "rois": rois})
            key = f"max_roi_pool {case['output_size']}"
            report[key] = relative(key, y, array(case["output"], np.float64), 0.0, 1e-6)
    assert [n for n in model.graph.node if n.op_type == "NonMaxSuppression"], "no NMS in the graph"
    f = load("nms.json")
    boxes, scores = array(f["boxes"]), array(f["scores"])
    run = single_node(
        "NonMaxSuppression",
        [("boxes", TensorProto.FLOAT, [1, None, 4]), ("scores", TensorProto.FLOAT, [1, 1, None]),
         ("max", TensorProto.INT64, [1]), ("iou", TensorProto.FLOAT, [1]),
         ("floor", TensorProto.FLOAT, [1])],
        [("selected", TensorProto.INT64)],
        {},
    )
    # The export passes a score floor of -0.5 (its per-class rows are -1 for other classes).
    assert scores.min() > -0.5
    for case in f["cases"]:
        (selected,) = run.run(None, {
            "boxes": boxes[None], "scores": scores[None, None],
            "max": np.array([len(scores)], np.int64),
            "iou": np.array([case["iou_threshold"]], np.float32),
            "floor": np.array([-0.5], np.float32),
        })
        keep = selected[:, 2].tolist()
        assert keep == case["keep"], f"nms iou {case['iou_threshold']}: {keep} != {case['keep']}"
        report[f"nms iou {case['iou_threshold']}"] = len(keep)
    print(json.dumps(report))


def with_fed(model, fed, outputs):
    """`model` with the values `fed` turned into graph inputs (their producers' outputs
    renamed away) and `outputs` as its outputs."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    for node in graph.node:
        for i, out in enumerate(node.output):
            if out in fed:
                node.output[i] = out + "__replaced"
    graph.input.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in fed)
    del graph.output[:]
    types = {"boxes": TensorProto.DOUBLE, "labels": TensorProto.INT64}
    # (A stage value fed in while its computed twin is an output.)
    graph.output.extend(
        helper.make_tensor_value_info(name, types.get(name, TensorProto.FLOAT), None) for name in outputs
    )
    return model


def relative(name, got, want, rtol, atol=0.0):
    """max |got - want| / (atol + rtol * max(1, |want|)) must be at most 1 (rtol 0: an
    absolute tolerance)."""
    assert got.shape == want.shape, f"{name}: shape {got.shape}, want {want.shape}"
    if not got.size:
        return 0.0
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    worst = float(np.max(diff / (atol + rtol * np.maximum(1.0, np.abs(want.astype(np.float64))))))
    assert worst <= 1.0, (
        f"{name}: max abs difference {float(diff.max())} exceeds {rtol} relative "
        f"(+{atol}) ({worst:.3g} of the tolerance)"
    )
    return float(diff.max())


STAGES = ["network_input", "features", "rpn_objectness", "rpn_deltas", "proposals",
          "class_logits", "box_deltas"]


def check_stages(args):
    """One session computes every stage from lbwnet's value of the stage before it: each
    stage value becomes a graph input (lbwnet's) while the node that computes it stays,
    its output renamed `<stage>__replaced` and made a graph output."""
    model, stages, image_path = onnx.load(args[0]), np.load(args[1]), args[2]
    image = np.asarray(Image.open(image_path).convert("RGB"))
    weights = sorted(k[len("weight/"):] for k in stages.files if k.startswith("weight/"))
    computed = [name + "__replaced" for name in STAGES]
    outputs = computed + ["boxes", "scores", "labels"] + weights
    feed = {"image": image}
    feed.update({name: stages[name] for name in STAGES})
    values = dict(zip(outputs, session(with_fed(model, STAGES, outputs)).run(None, feed)))
    report = {}

    for name in weights:
        got, want = values[name], stages["weight/" + name]
        assert got.shape == want.shape, f"{name}: shape {got.shape}, want {want.shape}"
        differ = int(np.count_nonzero(got.view(np.uint32) != want.view(np.uint32)))
        assert differ == 0, f"{name}: {differ} of {got.size} decoded weights differ from Q(W)"
    report["weights_bit_identical"] = len(weights)

    # Interpolation, convolution and accumulation order differ between libraries: the
    # float stages agree to 1e-4 (relative above magnitude 1; a different resize rule is
    # off by whole pixel levels, 0.017 after normalization); the decoding, NMS and
    # selection stages exactly in their indices and to 1e-5 in their values.
    tolerance = {"proposals": (1e-5, 0.0)}
    for name in STAGES:
        rtol, atol = tolerance.get(name, (1e-4, 1e-4))
        report[name] = relative(name, values[name + "__replaced"], stages[name], rtol, atol)
    labels = values["labels"]
    assert labels.tolist() == stages["labels"].tolist(), (
        f"labels {labels.tolist()[:20]}... != lbwnet's {stages['labels'].tolist()[:20]}..."
    )
    report["boxes"] = relative("boxes", values["boxes"], stages["boxes"], 1e-5)
    report["scores"] = relative("scores", values["scores"], stages["scores"], 1e-5)
    report["detections"] = int(labels.size)
    report["proposal_count"] = int(values["proposals__replaced"].shape[0])
    print(json.dumps(report))


def main():
    command, args = sys.argv[1], sys.argv[2:]
    {"model": check_model, "ops": check_ops, "stages": check_stages}[command](args)


if __name__ == "__main__":
    main()
