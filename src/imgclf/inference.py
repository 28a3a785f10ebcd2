"""Prediction on image bytes, shared by the evaluate stage, `imgclf predict` and `imgclf serve`.

`predict_bytes` is the one path from encoded image bytes to class probabilities:
Pillow decodes the bytes, `imgclf.prepare.to_model_image` converts the image
exactly as the prepare stage converts training data, and a `Predictor` runs
the model. The service splits the same path in two (`image_array` per request,
`Predictor.predict` per batch) so that it can batch across callers.

Every model file comes with a metadata file, `metadata.json` in the same
folder, that gives the class names, image size and backbone.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Annotated, Literal, Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from imgclf.errors import StageError
from imgclf.prepare import to_model_image

METADATA_FILE = "metadata.json"

# Formats that Pillow decodes by itself (its JPEG reader also opens the MPO files
# of many cameras). Others that Pillow identifies (EPS through Ghostscript, for
# example) are rejected as not an image.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")

# Pillow's own limit (Image.MAX_IMAGE_PIXELS, about 89 megapixels in Pillow 13).
DEFAULT_MAX_PIXELS = 89_478_485


class ModelMetadata(BaseModel):
    """Model description that callers need to build inputs and read outputs."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    classes: Annotated[list[str], Field(min_length=2)]  # class id -> name
    image_size: Annotated[int, Field(ge=32, le=1024)]  # pixels per side of the input
    backbone: str
    head: Literal["softmax", "sigmoid"]
    # How prepare made the training images square, and the colour behind transparency.
    resize: Literal["squash", "center_crop", "pad"] = "squash"
    background: Annotated[str, Field(pattern=r"^#[0-9a-fA-F]{6}$")] = "#ffffff"

    def conversion(self) -> dict[str, str]:
        """Return the keyword arguments of `image_array` that reproduce prepare's conversion."""
        return {"resize": self.resize, "background": self.background}


class ModelError(StageError):
    """A model or its metadata file is missing, unreadable or of an unknown format."""


def metadata_path(model_path: Path) -> Path:
    return Path(model_path).parent / METADATA_FILE


def write_metadata(folder: Path, metadata: ModelMetadata) -> None:
    from imgclf.files import write_json_atomic

    write_json_atomic(Path(folder) / METADATA_FILE, metadata.model_dump())


def load_metadata(model_path: Path) -> ModelMetadata:
    """Read the metadata file beside `model_path`; raise ModelError naming a missing or bad file."""
    path = metadata_path(model_path)
    if not path.is_file():
        raise ModelError(
            f"model metadata {path} not found; every model needs it beside the model file. "
            "Run `dvc repro export`, which writes it for models/model.keras and models/export/"
        )
    try:
        return ModelMetadata.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValidationError) as error:
        raise ModelError(f"model metadata {path} is invalid: {error}; run `dvc repro export`") from None


# --- decoding -----------------------------------------------------------------------------


class ImageError(ValueError):
    """An input that cannot become a model image; `kind` is the reason, for status codes and reports."""

    def __init__(self, kind: Literal["not_an_image", "undecodable", "too_large"], message: str):
        super().__init__(message)
        self.kind = kind


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode image bytes with Pillow, checking the pixel count from the header before decoding.

    Raises ImageError: "not_an_image" when the content is no format in IMAGE_FORMATS
    (whatever the file name or declared type), "too_large" when width x height
    exceeds `max_pixels` (a decompression bomb costs no memory, because `load()` is
    never called), and "undecodable" for truncated or corrupt data.
    """
    if not data:
        raise ImageError("not_an_image", "the file is empty")
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit; the check below rejects such images with a message.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(BytesIO(data), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise ImageError(
            "not_an_image", f"the content is not an image in a supported format ({', '.join(IMAGE_FORMATS)})"
        ) from None
    except Image.DecompressionBombError as error:
        raise ImageError("too_large", str(error)) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError("undecodable", f"the image header cannot be read: {error}") from None

    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            "too_large",
            f"the image is {width}x{height} = {width * height:,} pixels, more than the limit of "
            f"{max_pixels:,}; resize it before sending",
        )

    try:
        image.load()  # full decode: raises for truncated and corrupt data
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageError("undecodable", f"the {image.format} data cannot be decoded: {error}") from None
    return image


def image_array(
    data: bytes,
    image_size: int,
    *,
    resize: str = "squash",
    background: str = "#ffffff",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Turn encoded image bytes into one model input: (image_size, image_size, 3) float32 in [0, 255].

    `resize` and `background` must be the `prepare` params the model was trained with.
    """
    image = to_model_image(
        decode_image(data, max_pixels=max_pixels), image_size, resize=resize, background=background
    )
    return np.asarray(image, dtype=np.float32)


# --- predictors ---------------------------------------------------------------------------


class Predictor(Protocol):
    def predict(self, images: np.ndarray) -> np.ndarray:
        """Map (n, size, size, 3) float32 RGB in [0, 255] to (n, n_classes) probabilities."""
        ...


def class_probabilities(outputs: np.ndarray) -> np.ndarray:
    """Return (n, n_classes) probabilities; a sigmoid head's one column p becomes [1 - p, p]."""
    outputs = np.asarray(outputs, dtype=np.float32)
    if outputs.shape[-1] == 1:
        positive = outputs[:, 0]
        return np.stack([1.0 - positive, positive], axis=1)
    return outputs


class KerasPredictor:
    """A `.keras` or legacy `.h5` model, loaded with Keras' safe mode."""

    def __init__(self, path: Path):
        import keras

        import imgclf.model  # noqa: F401  registers the Preprocess layer for loading

        self.model = keras.models.load_model(path, safe_mode=True, compile=False)

    def predict(self, images: np.ndarray) -> np.ndarray:
        # predict_on_batch runs one graph call, without model.predict's per-call set-up.
        return class_probabilities(self.model.predict_on_batch(images))


class SavedModelPredictor:
    """A TensorFlow SavedModel written by `keras.Model.export`, called through its `serve` endpoint."""

    def __init__(self, path: Path):
        import tensorflow as tf

        self._tf = tf
        self.model = tf.saved_model.load(str(path))

    def predict(self, images: np.ndarray) -> np.ndarray:
        outputs = self.model.serve(self._tf.constant(images, dtype=self._tf.float32))
        return class_probabilities(outputs.numpy())


class TFLitePredictor:
    """A TensorFlow Lite flat buffer, run by the LiteRT interpreter with its input resized per batch."""

    def __init__(self, path: Path):
        # LiteRT (ai-edge-litert) replaces tf.lite.Interpreter, which TF 2.21 marks as deprecated.
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path))
        self._input = self.interpreter.get_input_details()[0]["index"]
        self._output = self.interpreter.get_output_details()[0]["index"]
        self._batch = 0

    def predict(self, images: np.ndarray) -> np.ndarray:
        if images.shape[0] != self._batch:
            self.interpreter.resize_tensor_input(self._input, images.shape, strict=False)
            self.interpreter.allocate_tensors()
            self._batch = images.shape[0]
        self.interpreter.set_tensor(self._input, images.astype(np.float32))
        self.interpreter.invoke()
        return class_probabilities(self.interpreter.get_tensor(self._output))


def load_predictor(path: Path) -> Predictor:
    """Load a model by its format: `.keras` and `.h5` files, a SavedModel folder, or a `.tflite` file."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model {path} not found; run `dvc repro` to train it, or pass --model")
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ModelError(f"model folder {path} contains no saved_model.pb; pass a SavedModel folder")
        return SavedModelPredictor(path)
    if path.suffix in (".keras", ".h5"):
        return KerasPredictor(path)
    if path.suffix == ".tflite":
        return TFLitePredictor(path)
    raise ModelError(
        f"model {path} has an unknown format; pass a .keras, .h5 or .tflite file or a SavedModel folder"
    )


@dataclass
class LoadedModel:
    """A predictor with the metadata it was exported with."""

    path: Path
    predictor: Predictor
    metadata: ModelMetadata


def load_model(path: Path) -> LoadedModel:
    """Load a model and its metadata file; the metadata is checked first, so a missing one fails fast."""
    metadata = load_metadata(path)
    return LoadedModel(Path(path), load_predictor(path), metadata)


# --- the shared path ------------------------------------------------------------------------


def predict_arrays(predictor: Predictor, images: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
    """Run `predictor` over model images in batches; returns (n, n_classes) float32."""
    batches = []
    for start in range(0, len(images), batch_size):
        batch = np.stack(images[start : start + batch_size])  # (batch, size, size, 3)
        batches.append(predictor.predict(batch))
    return np.concatenate(batches, axis=0)


def predict_bytes(
    predictor: Predictor,
    images: Sequence[bytes],
    *,
    image_size: int,
    batch_size: int = 32,
    resize: str = "squash",
    background: str = "#ffffff",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode, convert and classify encoded images; returns (n, n_classes) probabilities.

    Raises ImageError for the first input that cannot be used. Callers that go on
    past bad files call `image_array` per file and then `predict_arrays`.
    """
    arrays = [
        image_array(data, image_size, resize=resize, background=background, max_pixels=max_pixels)
        for data in images
    ]
    return predict_arrays(predictor, arrays, batch_size)


def top_k(probabilities: np.ndarray, classes: Sequence[str], k: int) -> list[tuple[str, float]]:
    """Return the k most probable (class, probability) pairs of one image, most probable first."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(classes[i], float(probabilities[i])) for i in order]
