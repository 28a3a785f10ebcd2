"""Registry of keras.applications backbones: constructor, preprocessing and valid settings.

Keras is imported only when a backbone is built, so that stages which merely
validate params (fetch, prepare, split) start quickly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from imgclf.errors import StageError

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class Backbone:
    constructor: str  # attribute of keras.applications
    # Mapping from raw RGB in [0, 255] to the backbone's input, as in that
    # family's `preprocess_input`. "tf" scales to [-1, 1]. "caffe" flips RGB to
    # BGR and subtracts the ImageNet channel means. "none" leaves the pixels to
    # the backbone, which rescales inside itself (EfficientNet).
    preprocessing: str
    # Width multipliers with published ImageNet weights; None means the
    # constructor takes no `alpha` and only 1.0 is accepted.
    alphas: tuple[float, ...] | None
    # Input sizes with published ImageNet weights; None means any size from 32 up.
    imagenet_sizes: tuple[int, ...] | None
    extra_kwargs: tuple[tuple[str, object], ...] = ()


# Valid alphas and sizes follow the checks in the keras.applications constructors (Keras 3.15).
BACKBONES: dict[str, Backbone] = {
    "mobilenet": Backbone("MobileNet", "tf", (0.25, 0.5, 0.75, 1.0), (128, 160, 192, 224)),
    "mobilenet_v2": Backbone(
        "MobileNetV2", "tf", (0.35, 0.5, 0.75, 1.0, 1.3, 1.4), (96, 128, 160, 192, 224)
    ),
    # Keras' own rescaling layer is switched off so that every backbone gets its
    # preprocessing from the same place (imgclf.model.Preprocess).
    "mobilenet_v3_small": Backbone(
        "MobileNetV3Small", "tf", (0.75, 1.0), None, (("include_preprocessing", False),)
    ),
    "mobilenet_v3_large": Backbone(
        "MobileNetV3Large", "tf", (0.75, 1.0), None, (("include_preprocessing", False),)
    ),
    "resnet50": Backbone("ResNet50", "caffe", None, None),
    "vgg16": Backbone("VGG16", "caffe", None, None),
    "efficientnet_b0": Backbone("EfficientNetB0", "none", None, None),
}
BACKBONE_NAMES = tuple(BACKBONES)

MIN_IMAGE_SIZE = 32


def check_settings(name: str, *, image_size: int, alpha: float, weights: str) -> None:
    """Raise ValueError if the backbone cannot be built with these settings."""
    backbone = BACKBONES[name]

    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"data.image_size = {image_size}: {name} needs at least {MIN_IMAGE_SIZE}")

    if backbone.alphas is None:
        if alpha != 1.0:
            raise ValueError(
                f"model.alpha = {alpha:g}: {name} has no width multiplier; set model.alpha to 1.0"
            )
    elif weights == "imagenet" and alpha not in backbone.alphas:
        allowed = ", ".join(f"{value:g}" for value in backbone.alphas)
        raise ValueError(
            f"model.alpha = {alpha:g}: {name} has ImageNet weights only for alpha in "
            f"{{{allowed}}}; pick one of those or set model.weights to none"
        )

    sizes = backbone.imagenet_sizes
    if weights == "imagenet" and sizes is not None and image_size not in sizes:
        allowed = ", ".join(str(size) for size in sizes)
        raise ValueError(
            f"data.image_size = {image_size}: {name} has ImageNet weights only for sizes "
            f"{{{allowed}}}; pick one of those or set model.weights to none"
        )


def build_backbone(name: str, *, image_size: int, alpha: float, weights: str) -> keras.Model:
    """Build the headless backbone: (batch, size, size, 3) -> (batch, h, w, channels).

    With weights="imagenet", Keras downloads the weights on first use into
    $KERAS_HOME/models (default ~/.keras/models) and reads them from there later.
    """
    import keras

    check_settings(name, image_size=image_size, alpha=alpha, weights=weights)
    backbone = BACKBONES[name]

    kwargs: dict[str, object] = {
        "include_top": False,
        "weights": None if weights == "none" else weights,
        "input_shape": (image_size, image_size, 3),
        **dict(backbone.extra_kwargs),
    }
    if backbone.alphas is not None:
        kwargs["alpha"] = alpha

    constructor = getattr(keras.applications, backbone.constructor)
    try:
        return constructor(**kwargs)
    except Exception as error:
        # keras.utils.get_file raises a bare Exception for HTTP and URL errors.
        if weights == "none" or "URL fetch failure" not in str(error):
            raise
        raise StageError(
            f"downloading the ImageNet weights of {name} (alpha {alpha:g}, size {image_size}) "
            f"failed: {error}. Offline, put that file into $KERAS_HOME/models/ (default "
            "~/.keras/models/), or set model.weights to none"
        ) from error
