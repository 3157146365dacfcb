"""What the onnxruntime scripts share: images read as lbwnet reads them, VOC image sets,
atomic writes. Imported from the scripts' own folder (`lbwnet bench detect` writes it
beside the scripts it carries)."""
import os

import numpy as np
from PIL import Image, ImageOps


def as_shown(image):
    """`image` as a viewer shows it: its EXIF orientation applied (lbwnet detect's frame);
    as stored when it has none or its EXIF block cannot be read."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a damaged EXIF block, as lbwnet: the pixels as stored
        return image


def read_rgb(path):
    """The decoded RGB uint8 [H, W, 3] image the model takes."""
    with Image.open(path) as opened:
        opened.load()
        return np.asarray(as_shown(opened).convert("RGB"))


def read_ids(root, split):
    """A VOC-layout split's image ids: each line's first word, as lbwnet reads an image set."""
    text = (root / "ImageSets/Main" / f"{split}.txt").read_text(encoding="utf-8-sig")
    return [line.split()[0] for line in text.splitlines() if line.split()]


def write_atomic(path, data):
    """Writes the bytes `data` to a temporary file beside `path`, then renames it over `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
