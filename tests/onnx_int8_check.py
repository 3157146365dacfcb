#!/usr/bin/env python3
"""Checks of an int8 ONNX model written by `lbwnet export --onnx --int8`, run by
tests/onnx_int8.rs through the project's Python environment (onnx, onnxruntime, numpy,
pillow).

    onnx_int8_check.py kernels INT8.onnx --convs N --fcs N --images N --picture IMAGE
            --optimized OUT.onnx
        the ONNX checker (full_check); the graph's QLinearConv / Gemm counts against the
        model file's quantized convs / fcs; onnxruntime's fully optimized graph (saved to
        OUT.onnx) without a float conv or fc, with QLinearConv and QGemm counts; the
        metadata's calibration summary; one run end to end on IMAGE
    onnx_int8_check.py weights INT8.onnx FLOAT.onnx --bits B --picture IMAGE
        every int8 weight (QLinearConv's w, the DequantizeLinear of a QGemm's w) against the
        float export's decoded weight of the same name: int8 * w_scale bit for bit where
        the scale is per tensor; where a frozen BatchNorm is folded (per-channel scales) the
        integers in the level set, equal to the float weight / (alpha * unit), and the
        scales equal alpha * unit * gamma / sqrt(var + eps)
    onnx_int8_check.py requantization INT8.onnx --picture IMAGE
        the first, the middle and the last QLinearConv of the graph fed IMAGE, under
        onnxruntime with optimizations disabled (the ONNX kernel) and all enabled (the NHWC
        contrib kernel), against an integer convolution and onnxruntime's requantization
        computed here

Each prints one JSON line. Every failed check raises, so the exit status is non-zero and
the message says which, with the numbers.
"""
import argparse
import json
from collections import Counter

import numpy as np
import onnx
import onnxruntime
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

# Float convolutions and matrix products, as onnxruntime names them in any domain (its
# fusions and the NCHWc layout's `Conv` in com.microsoft.nchwc).
FLOAT_OPS = {"Conv", "FusedConv", "NchwcConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"}
# The RPN's two 1x1 predictors run as Gemm (QGemm) over the feature map's cells.
RPN_PREDICTORS = 2
# FrozenBatchNorm's epsilon, in float64 as the export folds it (the float graph's
# BatchNormalization attribute holds it rounded to float32).
BN_EPS = 1e-5


def session(model, level, optimized=None):
    """An onnxruntime CPU session of `model` (a path or a ModelProto) at `level`."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = level
    if optimized is not None:
        options.optimized_model_filepath = optimized
    data = model if isinstance(model, str) else model.SerializeToString()
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def read_picture(path):
    with Image.open(path) as opened:
        return np.asarray(opened.convert("RGB"))


def feeds(image):
    # Threshold 0: random weights score below the default.
    return {"image": image, "score_thresh": np.asarray(0.0, dtype=np.float32)}


def with_outputs(model, outputs):
    """A copy of `model` whose graph also outputs `outputs` [(name, element type)]."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for name, elem in outputs:
        if name not in present:
            copy.graph.output.append(helper.make_tensor_value_info(name, elem, None))
            present.add(name)
    return copy


def values(model, outputs, image, level=onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL):
    """The values `outputs` [(name, element type)] of `model` run on `image`, by name."""
    names = [name for name, _ in outputs]
    run = session(with_outputs(model, outputs), level)
    return dict(zip(names, run.run(names, feeds(image))))


def initializers(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def op_counts(graph):
    return Counter(node.op_type for node in graph.node)


def metadata(model):
    return {p.key: p.value for p in model.metadata_props}


def kernels(args):
    onnx.checker.check_model(args.model, full_check=True)
    model = onnx.load(args.model)
    original = op_counts(model.graph)
    want_convs, want_gemms = args.convs, args.fcs + RPN_PREDICTORS
    assert original["QLinearConv"] == want_convs, (
        f"{original['QLinearConv']} QLinearConv nodes, the model file has {want_convs} "
        f"quantized convs besides the RPN's predictors")
    assert original["Gemm"] == want_gemms, (
        f"{original['Gemm']} Gemm nodes, the model file has {args.fcs} quantized fcs "
        f"+ {RPN_PREDICTORS} RPN predictors")
    assert original["Conv"] == 0, f"{original['Conv']} float Conv nodes in the int8 graph"

    # Residual sums: an Add of two DequantizeLinear outputs, to be fused into QLinearAdd;
    # every MaxPool of the trunk on a QLinearConv's uint8 output.
    producer = {out: node.op_type for node in model.graph.node for out in node.output}
    residual_adds = sum(
        1 for node in model.graph.node
        if node.op_type == "Add" and all(producer.get(i) == "DequantizeLinear" for i in node.input))
    pools = [node for node in model.graph.node if node.op_type == "MaxPool"]
    assert all(producer.get(node.input[0]) == "QLinearConv" for node in pools), (
        "a MaxPool on a float input")

    calibration = json.loads(metadata(model)["int8"])
    assert calibration["images"] == args.images, f"metadata int8: {calibration}"
    assert calibration["points"] > 0 and calibration["rule"], f"metadata int8: {calibration}"

    run = session(args.model, onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL, args.optimized)
    optimized = onnx.load(args.optimized)
    by_domain = Counter(f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in optimized.graph.node)
    ops = op_counts(optimized.graph)
    left = {op: ops[op] for op in FLOAT_OPS if ops[op]}
    assert not left, f"float conv / fc operators left after optimization: {left}; all: {dict(by_domain)}"
    assert ops["QLinearConv"] == want_convs, (
        f"{ops['QLinearConv']} QLinearConv after optimization, {want_convs} expected; "
        f"all: {dict(by_domain)}")
    assert ops["QGemm"] == want_gemms, (
        f"{ops['QGemm']} QGemm after optimization, {want_gemms} expected (not fused?); "
        f"all: {dict(by_domain)}")

    assert ops["QLinearAdd"] == residual_adds, (
        f"{ops['QLinearAdd']} QLinearAdd after optimization, {residual_adds} residual sums "
        f"expected; all: {dict(by_domain)}")

    image = read_picture(args.picture)
    outputs = [o.name for o in run.get_outputs()]
    assert outputs == ["boxes", "scores", "labels"], outputs
    boxes, scores, labels = run.run(None, feeds(image))
    count = len(scores)
    assert boxes.dtype == np.float64 and boxes.shape == (count, 4), (boxes.dtype, boxes.shape)
    assert scores.dtype == np.float32 and scores.shape == (count,), (scores.dtype, scores.shape)
    assert labels.dtype == np.int64 and labels.shape == (count,), (labels.dtype, labels.shape)
    assert count > 0, "no detection at score threshold 0"
    classes = json.loads(metadata(model)["classes"])
    assert labels.min() >= 1 and labels.max() <= len(classes), labels
    height, width = image.shape[:2]
    assert np.all(np.isfinite(boxes)) and boxes.min() >= 0, boxes
    assert np.all(boxes[:, [0, 2]] <= width) and np.all(boxes[:, [1, 3]] <= height), boxes
    print(json.dumps({
        "original": {op: original[op] for op in ["QLinearConv", "Gemm", "QuantizeLinear",
                                                  "DequantizeLinear", "MaxPool"]},
        "optimized": dict(sorted(by_domain.items())),
        "qlinearconv": ops["QLinearConv"],
        "qgemm": ops["QGemm"],
        "qlinearadd": ops["QLinearAdd"],
        "uint8_maxpools": len(pools),
        "int8": calibration,
        "detections": count,
    }))


def int8_weights(model):
    """(weight, scale) value names of every int8 weight: QLinearConv's w and w_scale, and
    the DequantizeLinear of a computed `<layer>.weight` (a QGemm's w)."""
    found = []
    for node in model.graph.node:
        if node.op_type == "QLinearConv":
            found.append((node.input[3], node.input[4]))
        elif node.op_type == "DequantizeLinear" and node.input[0].endswith(".weight"):
            found.append((node.input[0], node.input[1]))
    return found


def weights(args):
    int8 = onnx.load(args.int8)
    flt = onnx.load(args.float)
    pairs = int8_weights(int8)
    names = [w for w, _ in pairs]
    assert len(set(names)) == len(names), f"a weight used twice: {names}"
    constants, float_constants = initializers(int8), initializers(flt)
    assert not set(names) & set(constants), "an int8 weight is stored, not decoded in the graph"
    image = read_picture(args.picture)
    ints = values(int8, [(w, TensorProto.INT8) for w in names], image)
    floats = values(flt, [(w, TensorProto.FLOAT) for w in names], image)
    n = 1 << (args.bits - 2)
    unit = 2.0 ** (1 - n)
    levels = {0} | {s * (1 << j) for j in range(n) for s in (1, -1)}
    consumers = {}
    for node in flt.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    report = {"plain_layers": 0, "plain_values": 0, "folded_layers": 0, "folded_values": 0,
              "levels_seen": set()}
    for name, scale_name in pairs:
        q, w = ints[name], floats[name]
        scale = constants[scale_name]
        assert q.dtype == np.int8, f"{name}: {q.dtype}"
        # The RPN's 1x1 predictors run as matrix products: [O, C] for the float [O, C, 1, 1].
        assert q.size == w.size and q.shape == w.shape[: q.ndim], f"{name}: int8 {q.shape}, float {w.shape}"
        w = w.reshape(q.shape)
        assert scale.dtype == np.float32, f"{name}: scale {scale.dtype}"
        report["levels_seen"] |= set(np.unique(q).tolist())
        if scale.size == 1:
            # Per tensor: int8 * (alpha * unit) in float32 is the float export's alpha * level.
            rebuilt = q.astype(np.float32) * scale.reshape(())
            differ = rebuilt.view(np.uint32) != w.view(np.uint32)
            assert not differ.any(), (
                f"{name}: {int(differ.sum())} of {q.size} int8 * w_scale differ from the float "
                f"export's weight, largest by {float(np.abs(rebuilt - w).max())}")
            report["plain_layers"] += 1
            report["plain_values"] += int(q.size)
        else:
            # A frozen BatchNorm folded into per-channel scales: the integers are the codes.
            assert scale.shape == (q.shape[0],), f"{name}: scale {scale.shape}, weight {q.shape}"
            outside = set(np.unique(q).tolist()) - levels
            assert not outside, f"{name}: {sorted(outside)} are not {args.bits}-bit LBW levels"
            alpha = float_constants[name + ".alpha"]
            # alpha * unit is exact (unit a power of two), and so is the division.
            step = np.float32(alpha) * np.float32(unit)
            codes = w / step
            differ = codes != q.astype(np.float32)
            assert not differ.any(), (
                f"{name}: {int(differ.sum())} of {q.size} codes differ from the float weight "
                f"/ (alpha * unit) = / {float(step)}")
            conv_users = [n for n in consumers.get(name, []) if n.op_type == "Conv"]
            assert len(conv_users) == 1, f"{name}: {len(conv_users)} float convs use it"
            norms = [n for n in consumers.get(conv_users[0].output[0], [])
                     if n.op_type == "BatchNormalization"]
            assert len(norms) == 1, f"{name}: no BatchNormalization after its float conv"
            gamma, _, _, var = (float_constants[i].astype(np.float64) for i in norms[0].input[1:5])
            want = (np.float64(alpha) * unit) * (gamma / np.sqrt(var + BN_EPS))
            want = np.where(want == 0, 1.0, want).astype(np.float32)
            worst = float(np.max(np.abs(scale.astype(np.float64) / want - 1.0)))
            assert np.array_equal(scale, want), (
                f"{name}: per-channel scales differ from alpha * unit * gamma / sqrt(var + eps) "
                f"in {int((scale != want).sum())} of {scale.size} channels, relative {worst:.3g}")
            report["folded_layers"] += 1
            report["folded_values"] += int(q.size)
    report["levels_seen"] = sorted(report["levels_seen"])
    print(json.dumps(report))


def conv_accumulators(x, w, strides, pads):
    """The integer convolution of x [N, C, H, W] (the zero point already subtracted, so the
    padding is 0) with w [O, C, kh, kw], int64 [N, O, Ho, Wo]. In float64 on BLAS: every
    term and partial sum is an integer far below 2^53, so any summation order is exact."""
    padded = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    batch = x.shape[0]
    out_channels, channels, kh, kw = w.shape
    windows = sliding_window_view(padded, (kh, kw), axis=(2, 3))[:, :, :: strides[0], :: strides[1]]
    ho, wo = windows.shape[2:4]
    columns = windows.transpose(0, 2, 3, 1, 4, 5).reshape(batch * ho * wo, channels * kh * kw)
    acc = columns.astype(np.float64) @ w.reshape(out_channels, -1).T.astype(np.float64)
    assert np.all(acc == np.rint(acc))
    return np.rint(acc).astype(np.int64).reshape(batch, ho, wo, out_channels).transpose(0, 3, 1, 2)


def attributes(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def requantized(acc, x_scale, w_scale, y_scale, y_zero_point):
    """onnxruntime's requantization of int32 accumulators (bias included) to uint8, as its
    QLinearConv kernels do it (qlinearconv.cc's ComputeOutputScale, then MLAS's
    MlasRequantizeOutput or the symmetric conv kernels' post-processing):

    - the multiplier per output channel in float32, `x_scale * w_scale[c] / y_scale`
      evaluated left to right;
    - float32(acc) times the multiplier, in float32 (exact conversion: |acc| < 2^24);
    - rounded to nearest, ties to even (the magic-number add, cvtps2dq), plus the zero
      point, saturated to [0, 255] (MLAS clamps to [-zp, 255 - zp] before rounding: the
      same, the bounds being integers).

    Measured on the ResNet of tests/onnx_int8.rs (BatchNorms with per-channel statistics,
    2.6M outputs per run; 3 exact .5 products, in the last node): this matches every
    output; `(x_scale / y_scale) * w_scale` differs in 3, a float64 multiplier in 1, ties
    rounded away from zero in 1 (a tie), a bias off by one in 20000
    (`x_scale * (w_scale / y_scale)` happens to agree there).
    """
    multiplier = (np.float32(x_scale) * w_scale.astype(np.float32).reshape(-1)) / np.float32(y_scale)
    assert multiplier.dtype == np.float32
    product = acc.astype(np.float32) * multiplier.reshape(1, -1, 1, 1)
    assert product.dtype == np.float32
    rounded = np.rint(product)
    return np.clip(rounded + np.float32(y_zero_point), 0, 255).astype(np.uint8), product


def requantization(args):
    model = onnx.load(args.model)
    convs = [n for n in model.graph.node if n.op_type == "QLinearConv"]
    picks = sorted({0, len(convs) // 2, len(convs) - 1})
    constants = initializers(model)
    image = read_picture(args.picture)
    outputs = []
    for k in picks:
        node = convs[k]
        outputs += [(node.input[0], TensorProto.UINT8), (node.input[3], TensorProto.INT8),
                    (node.output[0], TensorProto.UINT8)]
    levels = onnxruntime.GraphOptimizationLevel
    runs = {"disabled": values(model, outputs, image, levels.ORT_DISABLE_ALL)}
    # All optimizations: the NHWC contrib QLinearConv on the folded, prepacked weight (the
    # kernel a deployment runs); the weight itself from the first run.
    runs["all"] = values(model, [o for o in outputs if o[1] == TensorProto.UINT8], image,
                         levels.ORT_ENABLE_ALL)
    report = {"nodes": [], "compared": 0, "max_abs_acc": 0}
    for k in picks:
        node = convs[k]
        attrs = attributes(node)
        assert attrs.get("group", 1) == 1 and set(attrs.get("dilations", [1, 1])) == {1}, attrs
        x_scale, x_zp, w_scale, w_zp, y_scale, y_zp, bias = (
            constants[node.input[i]] for i in (1, 2, 4, 5, 6, 7, 8))
        assert not np.any(w_zp), f"{node.name}: weight zero point {w_zp}"
        w = runs["disabled"][node.input[3]]
        entry = {"node": k, "output": node.output[0], "kernel": attrs["kernel_shape"],
                 "strides": attrs["strides"], "per_channel_scale": int(w_scale.size) > 1,
                 "x_zero_point": int(x_zp), "y_zero_point": int(y_zp)}
        # Each run against its own input: the two runs' inputs may differ where the
        # optimized graph computes an earlier layer otherwise (a residual sum as
        # QLinearAdd, for one).
        entry["inputs_differing_between_runs"] = int(
            np.sum(runs["disabled"][node.input[0]] != runs["all"][node.input[0]]))
        for level, got in runs.items():
            x, y = got[node.input[0]], got[node.output[0]]
            acc = conv_accumulators(x.astype(np.int64) - int(x_zp), w.astype(np.int64),
                                    attrs["strides"], attrs["pads"])
            acc += bias.astype(np.int64).reshape(1, -1, 1, 1)
            largest = int(np.abs(acc).max())
            assert largest < 1 << 24, (
                f"{node.output[0]}: |acc| up to {largest} >= 2^24, float32(acc) is not exact")
            want, product = requantized(acc, x_scale, w_scale, y_scale, y_zp)
            assert y.dtype == np.uint8 and y.shape == want.shape, (y.dtype, y.shape, want.shape)
            # Exact .5 ties of float32(acc) * multiplier, where the rounding mode would show.
            ties = np.abs(product - np.trunc(product)) == 0.5
            differ = y != want
            if differ.any():
                raise AssertionError(
                    f"{level}: {node.output[0]} (QLinearConv {k}): {int(differ.sum())} of "
                    f"{want.size} outputs differ from the requantization, largest by "
                    f"{int(np.abs(y.astype(int) - want.astype(int)).max())}; "
                    f"{int((differ & ties).sum())} of them at .5 ties "
                    f"(ties in all: {int(ties.sum())})")
            report["compared"] += int(want.size)
            report["max_abs_acc"] = max(report["max_abs_acc"], largest)
            entry[level] = {"shape": list(want.shape), "max_abs_acc": largest,
                            "interior": int(np.sum((want > 0) & (want < 255))),
                            "values": int(want.size), "ties": int(ties.sum())}
        report["nodes"].append(entry)
    report["qlinearconv_nodes"] = len(convs)
    print(json.dumps(report))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    k = sub.add_parser("kernels")
    k.add_argument("model")
    k.add_argument("--convs", type=int, required=True)
    k.add_argument("--fcs", type=int, required=True)
    k.add_argument("--images", type=int, required=True)
    k.add_argument("--picture", required=True)
    k.add_argument("--optimized", required=True)
    w = sub.add_parser("weights")
    w.add_argument("int8")
    w.add_argument("float")
    w.add_argument("--bits", type=int, required=True)
    w.add_argument("--picture", required=True)
    r = sub.add_parser("requantization")
    r.add_argument("model")
    r.add_argument("--picture", required=True)
    args = parser.parse_args()
    {"kernels": kernels, "weights": weights, "requantization": requantization}[args.command](args)


if __name__ == "__main__":
    main()
