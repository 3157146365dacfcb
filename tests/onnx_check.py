#!/usr/bin/env python3
"""Checks of an ONNX model written by `lbwnet export --onnx`, run by tests/onnx_export.rs
through the project's Python environment (onnx, onnxruntime, numpy).

    onnx_check.py model M.onnx --lbw-bytes N --lbw-float-bytes N
        the ONNX checker (full_check) and the size rules; prints a JSON summary
    onnx_check.py ops M.onnx FIXTURES_DIR
        onnxruntime's RoiAlign / MaxRoiPool, with the attributes of the exported graph's own
        nodes, on the fixtures' inputs against a torchvision reference that is first held
        to every committed torchvision case; NonMaxSuppression against the fixture
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


def node_attributes(model, op):
    """The attributes of each `op` node of the graph (distinct sets, in graph order)."""
    found = []
    for node in model.graph.node:
        if node.op_type == op:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
            if attrs not in found:
                found.append(attrs)
    return found


def opset(model):
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def single_node(op, inputs, outputs, attrs, version=17, ir_version=8):
    node = helper.make_node(op, [name for name, _, _ in inputs], [name for name, _ in outputs], **attrs)
    graph = helper.make_graph(
        [node],
        op,
        [helper.make_tensor_value_info(name, t, shape) for name, t, shape in inputs],
        [helper.make_tensor_value_info(name, t, None) for name, t in outputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", version)])
    model.ir_version = ir_version
    return session(model)


# References for the pooling operators with any attributes, following torchvision 0.26's
# CPU kernels (roi_align_kernel.cpp, roi_pool_kernel.cpp) step by step in float32. They are
# held to every case of the committed torchvision fixtures before they judge onnxruntime.
F32 = np.float32


def roi_align_reference(x, rois, output_size, spatial_scale, sampling_ratio, aligned):
    _, channels, height, width = x.shape
    ph_n, pw_n = output_size
    scale, offset = F32(spatial_scale), F32(0.5 if aligned else 0.0)
    y_out = np.zeros((rois.shape[0], channels, ph_n, pw_n), np.float64)
    for n, roi in enumerate(rois.astype(F32)):
        image = x[int(roi[0])].astype(np.float64)
        x1, y1, x2, y2 = (F32(v) * scale - offset for v in roi[1:])
        roi_w, roi_h = F32(x2 - x1), F32(y2 - y1)
        if not aligned:
            roi_w, roi_h = max(roi_w, F32(1)), max(roi_h, F32(1))
        bin_h, bin_w = F32(roi_h / F32(ph_n)), F32(roi_w / F32(pw_n))
        grid_h = sampling_ratio if sampling_ratio > 0 else int(np.ceil(roi_h / F32(ph_n)))
        grid_w = sampling_ratio if sampling_ratio > 0 else int(np.ceil(roi_w / F32(pw_n)))
        count = max(grid_h * grid_w, 1)
        for ph in range(ph_n):
            for pw in range(pw_n):
                total = np.zeros(channels, np.float64)
                for iy in range(grid_h):
                    yy = F32(y1 + F32(ph) * bin_h) + F32(F32(iy + 0.5) * bin_h / F32(grid_h))
                    for ix in range(grid_w):
                        xx = F32(x1 + F32(pw) * bin_w) + F32(F32(ix + 0.5) * bin_w / F32(grid_w))
                        total += bilinear(image, F32(yy), F32(xx), height, width)
                y_out[n, :, ph, pw] = total / count
    return y_out


def bilinear(image, y, x, height, width):
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0
    y, x = max(y, F32(0)), max(x, F32(0))
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = F32(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = F32(x_low)
    else:
        x_high = x_low + 1
    ly, lx = F32(y - y_low), F32(x - x_low)
    hy, hx = F32(1) - ly, F32(1) - lx
    return (hy * hx * image[:, y_low, x_low] + hy * lx * image[:, y_low, x_high]
            + ly * hx * image[:, y_high, x_low] + ly * lx * image[:, y_high, x_high])


def c_round(v):
    """C's round(): halves away from zero (numpy rounds them to even)."""
    return int(np.sign(v) * np.floor(np.abs(v) + F32(0.5)))


def roi_pool_reference(x, rois, output_size, spatial_scale):
    _, channels, height, width = x.shape
    ph_n, pw_n = output_size
    scale = F32(spatial_scale)
    y_out = np.zeros((rois.shape[0], channels, ph_n, pw_n), np.float64)
    for n, roi in enumerate(rois.astype(F32)):
        image = x[int(roi[0])]
        start_w, start_h, end_w, end_h = (c_round(F32(v) * scale) for v in roi[1:])
        roi_w, roi_h = max(end_w - start_w + 1, 1), max(end_h - start_h + 1, 1)
        bin_h, bin_w = F32(F32(roi_h) / F32(ph_n)), F32(F32(roi_w) / F32(pw_n))
        for ph in range(ph_n):
            hstart = min(max(int(np.floor(F32(ph) * bin_h)) + start_h, 0), height)
            hend = min(max(int(np.ceil(F32(ph + 1) * bin_h)) + start_h, 0), height)
            for pw in range(pw_n):
                wstart = min(max(int(np.floor(F32(pw) * bin_w)) + start_w, 0), width)
                wend = min(max(int(np.ceil(F32(pw + 1) * bin_w)) + start_w, 0), width)
                if hend > hstart and wend > wstart:
                    y_out[n, :, ph, pw] = image[:, hstart:hend, wstart:wend].max(axis=(1, 2))
    return y_out


def graph_rois(rois, fixture_scale, spatial_scale):
    """The fixture's RoIs rescaled so that the graph's spatial scale maps them onto the
    same region of the fixture's feature map as the fixture's scale does."""
    scaled = rois.copy()
    scaled[:, 1:] *= F32(fixture_scale / spatial_scale)
    return scaled


def check_ops(args):
    """onnxruntime's pooling with the attributes of the exported graph's own nodes (output
    size, sampling ratio, spatial scale, mode, coordinate transformation), on the fixtures'
    feature maps and RoIs, against the torchvision reference; NMS against the fixture."""
    model, fixtures = onnx.load(args[0]), args[1]
    version, ir_version = opset(model), model.ir_version
    load = lambda name: json.load(open(os.path.join(fixtures, name)))
    report = {}
    align_nodes = node_attributes(model, "RoiAlign")
    if align_nodes:
        f = load("roi_align.json")
        x, rois = array(f["input"]), array(f["rois"])
        for case in f["cases"]:
            want = array(case["output"], np.float64)
            got = roi_align_reference(x, rois, case["output_size"], case["spatial_scale"],
                                      case["sampling_ratio"], case["aligned"])
            relative(f"the roi_align reference on the fixture case {case['output_size']} "
                     f"sampling {case['sampling_ratio']} aligned {case['aligned']}", got, want, 0.0, 1e-5)
        fixture_scale = f["cases"][0]["spatial_scale"]
        for attrs in align_nodes:
            # ONNX's defaults for what a node leaves out.
            mode = attrs.get("mode", "avg")
            transform = attrs.get("coordinate_transformation_mode", "half_pixel")
            oh, ow = attrs.get("output_height", 1), attrs.get("output_width", 1)
            sampling, scale = attrs.get("sampling_ratio", 0), attrs.get("spatial_scale", 1.0)
            assert mode == "avg", f"RoiAlign mode {mode}: torchvision's roi_align averages"
            assert transform in ("half_pixel", "output_half_pixel"), transform
            r = graph_rois(rois, fixture_scale, scale)
            run = single_node(
                "RoiAlign",
                [("x", TensorProto.FLOAT, x.shape), ("rois", TensorProto.FLOAT, [None, 4]),
                 ("batch", TensorProto.INT64, [None])],
                [("y", TensorProto.FLOAT)],
                attrs, version, ir_version,
            )
            (y,) = run.run(None, {"x": x, "rois": r[:, 1:].copy(), "batch": r[:, 0].astype(np.int64)})
            want = roi_align_reference(x, r, (oh, ow), scale, sampling, transform == "half_pixel")
            key = f"roi_align {transform} {oh}x{ow} sampling {sampling} scale {scale:g}"
            report[key] = relative(key, y, want, 0.0, 1e-5)
    pool_nodes = node_attributes(model, "MaxRoiPool")
    if pool_nodes:
        f = load("roi_pool.json")
        x, rois = array(f["input"]), array(f["rois"])
        for case in f["cases"]:
            want = array(case["output"], np.float64)
            got = roi_pool_reference(x, rois, case["output_size"], case["spatial_scale"])
            relative(f"the roi_pool reference on the fixture case {case['output_size']}",
                     got, want, 0.0, 1e-6)
        fixture_scale = f["cases"][0]["spatial_scale"]
        for attrs in pool_nodes:
            shape, scale = list(attrs["pooled_shape"]), attrs.get("spatial_scale", 1.0)
            r = graph_rois(rois, fixture_scale, scale)
            run = single_node(
                "MaxRoiPool",
                [("x", TensorProto.FLOAT, x.shape), ("rois", TensorProto.FLOAT, [None, 5])],
                [("y", TensorProto.FLOAT)],
                attrs, version, ir_version,
            )
            (y,) = run.run(None, {"x": x, "rois": r})
            want = roi_pool_reference(x, r, shape, scale)
            key = f"max_roi_pool {shape[0]}x{shape[1]} scale {scale:g}"
            report[key] = relative(key, y, want, 0.0, 1e-6)
    assert [n for n in model.graph.node if n.op_type == "NonMaxSuppression"], "no NMS in the graph"
    f = load("nms.json")
    boxes, scores = array(f["boxes"]), array(f["scores"])
    run = single_node(
        "NonMaxSuppression",
        [("boxes", TensorProto.FLOAT, [1, None, 4]), ("scores", TensorProto.FLOAT, [1, 1, None]),
         ("max", TensorProto.INT64, [1]), ("iou", TensorProto.FLOAT, [1]),
         ("floor", TensorProto.FLOAT, [1])],
        [("selected", TensorProto.INT64)],
        {}, version, ir_version,
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
    # float stages agree within 1e-4 absolute (a different resize rule is off by whole
    # pixel levels, 0.017 after normalization); the decoding, NMS and selection stages
    # exactly in their indices and within 1e-5 (relative above magnitude 1) in their values.
    tolerance = {"proposals": (1e-5, 0.0)}
    for name in STAGES:
        rtol, atol = tolerance.get(name, (0.0, 1e-4))
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
