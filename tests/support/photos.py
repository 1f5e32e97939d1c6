"""Benign real photos that installed packages ship (scikit-image, scikit-learn, matplotlib), loaded at run
time without a download (shared/MODELS.md). Used by the tests, the benchmarks and the false-positive
report; none is committed."""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

CORPUS = (
    "astronaut", "brick", "camera", "cat", "cell", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass",
    "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms", "moon", "page",
    "retina", "rocket", "text", "china", "flower", "grace_hopper",
)


@cache
def photo_array(name: str) -> np.ndarray:
    if name == "grace_hopper":
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        return np.asarray(Image.open(path).convert("RGB"))
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_images

        images = load_sample_images()
        return next(img for fn, img in zip(images.filenames, images.images, strict=True) if Path(fn).stem == name)
    from skimage import data

    return np.asarray(getattr(data, name)())


def photo_image(name: str) -> Image.Image:
    return Image.fromarray(photo_array(name)).convert("RGB")


def photo(name: str, fmt: str = "JPEG") -> bytes:
    img = Image.fromarray(photo_array(name))
    if fmt == "JPEG" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()
