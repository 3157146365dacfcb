#!/usr/bin/env python3
"""Export a torchvision backbone's state_dict as safetensors, for lbwnet's load-by-name.

    python scripts/export_torchvision_weights.py vgg16 vgg16.safetensors
    python scripts/export_torchvision_weights.py resnet50 resnet50.safetensors

downloads torchvision's ImageNet weights (IMAGENET1K_V1 unless --weights says otherwise)
and writes every state_dict tensor under its torchvision name. `num_batches_tracked`
counters are left out: lbwnet's ResNet uses frozen batch norm, which has none.

--random skips the download: the model keeps torchvision's random initialization (seeded
by --seed), with random batch-norm statistics and affine parameters so that a comparison
against lbwnet exercises the frozen batch norm. --reference REF.safetensors also writes,
in eval mode, `input` [1, 3, S, S] (S = --input-size) with the trunk's output `trunk`
(VGG: features without the last max-pool; ResNet: conv1..layer3), and `head_input`
[2, C, P, P] with the RoI head's output `head` (VGG: fc6/fc7, P = 7; ResNet: layer4 and
global average pooling, P = 14).

The file is written with the `safetensors` package when it is installed, else by this
script: an 8-byte little-endian header length, a JSON header mapping each name to
{dtype, shape, data_offsets} (plus a `__metadata__` string map), padded with spaces to a
multiple of 8 bytes, then the tensors' little-endian bytes back to back. Outputs are
written to a temporary file and renamed, so a reader never sees a partial file.
"""
import argparse
import json
import os
import struct
import sys
import tempfile

import torch
import torchvision

DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}

# (trunk channels, RoI pool size) the heads expect, as lbwnet's backbones.
HEAD_INPUT = {"vgg16": (512, 7), "resnet50": (1024, 14)}


def tensor_bytes(t):
    """The raw bytes of a contiguous CPU tensor (the platform is little-endian)."""
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def write_safetensors_by_hand(tensors, file, metadata):
    header = {"__metadata__": metadata}
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in DTYPES:
            raise SystemExit(f"tensor {name}: dtype {t.dtype} has no safetensors code")
        end = offset + t.numel() * t.element_size()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, end]}
        offset = end
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    file.write(struct.pack("<Q", len(header_bytes)))
    file.write(header_bytes)
    for t in tensors.values():
        file.write(tensor_bytes(t))


def save(tensors, path, metadata):
    """Writes `tensors` (name -> tensor) to `path` atomically."""
    if sys.byteorder != "little":
        raise SystemExit("safetensors is little-endian; this script does not byte-swap")
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".export-tmp-", suffix=".safetensors", dir=directory)
    try:
        with os.fdopen(fd, "wb") as file:
            try:
                from safetensors.torch import save as safetensors_save
            except ImportError:
                write_safetensors_by_hand(tensors, file, metadata)
            else:
                file.write(safetensors_save(tensors, metadata=metadata))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def randomize_batch_norms(model, generator):
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            c = module.num_features
            with torch.no_grad():
                module.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(c, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(c, generator=generator) * 1.5 + 0.5)


def trunk_and_head(arch, model):
    if arch == "vgg16":
        trunk = model.features[:30]  # up to conv5_3's ReLU, without the last max-pool
        head = torch.nn.Sequential(torch.nn.Flatten(1), *model.classifier[:6])
    else:
        trunk = torch.nn.Sequential(
            model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3
        )
        head = torch.nn.Sequential(model.layer4, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(1))
    return trunk, head


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arch", choices=["vgg16", "resnet50"])
    parser.add_argument("out", help="output .safetensors file")
    parser.add_argument("--weights", default="IMAGENET1K_V1", help="torchvision weights enum member")
    parser.add_argument("--random", action="store_true", help="random weights, no download")
    parser.add_argument("--seed", type=int, default=0, help="seed of --random and --reference")
    parser.add_argument("--reference", help="also write reference inputs/outputs here")
    parser.add_argument("--input-size", type=int, default=64, help="side of the reference image")
    args = parser.parse_args()

    builder = getattr(torchvision.models, args.arch)
    torch.manual_seed(args.seed)
    if args.random:
        model = builder(weights=None)
        generator = torch.Generator().manual_seed(args.seed)
        randomize_batch_norms(model, generator)
        source = f"torchvision {args.arch}, random weights, seed {args.seed}"
    else:
        enum = torchvision.models.get_model_weights(args.arch)
        if args.weights not in enum.__members__:
            raise SystemExit(f"--weights {args.weights}: {args.arch} has {', '.join(enum.__members__)}")
        model = builder(weights=enum[args.weights])
        source = f"torchvision {args.arch} {args.weights}"
    model.eval()

    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    save(state, args.out, {"format": "pt", "source": source})
    print(f"wrote {len(state)} tensors ({source}) to {args.out}")

    if args.reference:
        trunk, head = trunk_and_head(args.arch, model)
        channels, pool = HEAD_INPUT[args.arch]
        generator = torch.Generator().manual_seed(args.seed + 1)
        image = torch.randn(1, 3, args.input_size, args.input_size, generator=generator)
        head_input = torch.randn(2, channels, pool, pool, generator=generator).relu()
        with torch.no_grad():
            reference = {"input": image, "trunk": trunk(image), "head_input": head_input, "head": head(head_input)}
        save(reference, args.reference, {"format": "pt", "source": source})
        print(f"wrote reference outputs to {args.reference}")


if __name__ == "__main__":
    main()
