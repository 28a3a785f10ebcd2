"""Project paths and the typed, validated contents of params.yaml.

Every stage calls `load_params()` before it does any work. The whole file is
validated, so an unknown key (a typo in `dvc exp run -S`), a wrong type or an
out-of-range value stops the stage with one message per problem that names
the key, the value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ruamel.yaml import YAML, YAMLError

from imgclf import zoo
from imgclf.errors import StageError

# Paths are relative to the repository root, which is where DVC runs every stage.
PARAMS_FILE = Path("params.yaml")
RAW_DIR = Path("data/raw")
PREPARED_DIR = Path("data/prepared")
PREPARED_IMAGES_DIR = PREPARED_DIR / "images"
PREPARED_MANIFEST = PREPARED_DIR / "manifest.csv"
DROPPED_LIST = PREPARED_DIR / "dropped.csv"
SPLIT_DIR = Path("data/split")
SPLITS = ("train", "val", "test")
MODELS_DIR = Path("models")
HEAD_MODEL = MODELS_DIR / "head.keras"
FINAL_MODEL = MODELS_DIR / "model.keras"
EXPORT_DIR = MODELS_DIR / "export"
METRICS_DIR = Path("metrics")
BALANCE_DIR = METRICS_DIR / "balance"  # images per class, one CSV per split
DVCLIVE_DIR = Path("dvclive")
FEATURES_DIR = Path("data/features")  # cached backbone activations, written by the features stage
AUDIT_REPORT = METRICS_DIR / "audit.json"


def split_manifest(split: str) -> Path:
    return SPLIT_DIR / f"{split}.csv"


PositiveInt = Annotated[int, Field(ge=1)]
LearningRate = Annotated[float, Field(gt=0, le=1)]
Fraction = Annotated[float, Field(gt=0, lt=1)]


class Section(BaseModel):
    # strict: "1e-3" from a YAML string is not silently turned into a float,
    # and `true` is not accepted where a number is expected.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataParams(Section):
    source: Annotated[str, Field(min_length=1)]
    # Expected SHA-256 of a downloaded archive, or None to accept the cached file.
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None
    image_size: Annotated[int, Field(ge=32, le=1024)]


# Pillow warns above this many pixels; a larger limit would need its guard turned off.
PILLOW_PIXEL_LIMIT = 89_478_485


class PrepareParams(Section):
    resize: Literal["squash", "center_crop", "pad"]
    background: Annotated[str, Field(pattern=r"^#[0-9a-fA-F]{6}$")]  # "#rrggbb"
    min_size: Annotated[int, Field(ge=1)]  # shorter side in pixels, before resizing
    max_pixels: Annotated[int, Field(ge=1, le=PILLOW_PIXEL_LIMIT)]  # width x height
    # Bits of a 64-bit hash. Above about 10, chains of loose matches join unrelated photos.
    near_duplicate_distance: Annotated[int, Field(ge=0, le=10)]
    jpeg_quality: Annotated[int, Field(ge=50, le=100)]
    workers: Annotated[int, Field(ge=0)]  # 0 uses every CPU core


class SplitParams(Section):
    val: Fraction
    test: Fraction
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)]
    # How far a class's val or test count may stray from its target before the
    # hashed assignment is corrected, in standard deviations of the hashing noise.
    tolerance_sd: Annotated[float, Field(ge=0, le=10)]

    @model_validator(mode="after")
    def _leave_room_for_train(self) -> SplitParams:
        if self.val + self.test >= 1:
            raise ValueError(
                f"split.val + split.test = {self.val + self.test:g} leaves no images "
                "for training; the sum must be below 1 (e.g. val: 0.15, test: 0.15)"
            )
        return self


class ModelParams(Section):
    backbone: Literal[zoo.BACKBONE_NAMES]  # type: ignore[valid-type]
    alpha: Annotated[float, Field(gt=0, le=2)]
    weights: Literal["imagenet", "none"]
    # "sigmoid" is one output unit with binary cross-entropy, for two classes only.
    head: Literal["softmax", "sigmoid"]
    dropout: Annotated[float, Field(ge=0, lt=1)]
    l1: Annotated[float, Field(ge=0)]
    l2: Annotated[float, Field(ge=0)]


class AugmentParams(Section):
    flip: Literal["none", "horizontal", "vertical", "horizontal_and_vertical"]
    # Each factor follows the Keras layer of the same name; 0 turns it off.
    rotation: Annotated[float, Field(ge=0, le=1)]  # fraction of a full turn
    zoom: Annotated[float, Field(ge=0, lt=1)]
    brightness: Annotated[float, Field(ge=0, le=1)]
    contrast: Annotated[float, Field(ge=0, le=1)]


class FeaturesParams(Section):
    # Augmented copies of each training image whose activations are cached; view 0
    # is the image itself. Each training epoch draws one view per image.
    train_views: Annotated[int, Field(ge=1, le=64)]
    dtype: Literal["float16", "float32"]  # of the cached arrays on disk
    batch_size: Annotated[int, Field(ge=1, le=4096)]  # images per forward pass; speed only


class AuditParams(Section):
    folds: Annotated[int, Field(ge=2, le=20)]  # cross-validation folds of the linear model
    # An image is a likely mislabel when the out-of-fold model gives another class
    # at least this probability.
    mislabel_confidence: Annotated[float, Field(gt=0, lt=1)]
    # An image is an outlier when it is at least this many robust standard deviations
    # farther from every class than that class's typical image (audit.outlier_scores).
    outlier_threshold: Annotated[float, Field(gt=0, le=100)]
    grid_size: Annotated[int, Field(ge=1, le=64)]  # top suspects drawn in the image grid
    # Paths of prepared images, as metrics/audit.json lists them, that train_head and
    # finetune leave out. The audit itself still scores them.
    exclude: list[Annotated[str, Field(min_length=1)]]


class ComputeParams(Section):
    # tf.distribute strategy: auto is mirrored when more than one GPU is visible,
    # else none (the default strategy).
    distribute: Literal["auto", "none", "mirrored", "multi_worker"]
    # mixed_float16 compute: auto turns it on when every visible GPU supports it.
    mixed_precision: Literal["auto", "on", "off"]


class TrainHeadParams(Section):
    optimizer: Literal["adam", "sgd", "rmsprop"]
    lr: LearningRate
    momentum: Annotated[float, Field(ge=0, lt=1)]  # used by sgd and rmsprop
    batch_size: Annotated[int, Field(ge=1, le=4096)]
    epochs: PositiveInt
    patience: Annotated[int, Field(ge=0)]
    class_weight: Literal["none", "balanced"]


class FinetuneParams(Section):
    unfreeze: PositiveInt  # layers counted from the top of the backbone
    lr: LearningRate
    batch_size: Annotated[int, Field(ge=1, le=4096)]
    epochs: PositiveInt
    patience: Annotated[int, Field(ge=0)]


class EvaluateParams(Section):
    batch_size: Annotated[int, Field(ge=1, le=4096)]
    # Class scored by the binary ROC and precision-recall curves and ROC AUC; None
    # means the second class in sorted order. It must be None for more than two
    # classes, where every class gets a one-vs-rest curve. It is checked against
    # the class names when the stage runs.
    positive_class: Annotated[str, Field(min_length=1)] | None
    calibration_bins: Annotated[int, Field(ge=2, le=100)]  # equal-width bins of confidence
    top_k: Annotated[int, Field(ge=2)]  # top-k accuracy is reported for more than top_k classes
    gallery_size: Annotated[int, Field(ge=1, le=64)]  # most confident mistakes shown


class ExportParams(Section):
    batch_size: Annotated[int, Field(ge=1, le=4096)]  # images per call in the parity check
    # The stage fails when a format's top-1 agreement with the Keras model is lower.
    min_agreement: Annotated[float, Field(ge=0, le=1)]


class Params(Section):
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)]
    data: DataParams
    prepare: PrepareParams
    split: SplitParams
    model: ModelParams
    augment: AugmentParams
    compute: ComputeParams
    features: FeaturesParams
    audit: AuditParams
    train_head: TrainHeadParams
    finetune: FinetuneParams
    evaluate: EvaluateParams
    export: ExportParams

    @model_validator(mode="after")
    def _backbone_accepts_settings(self) -> Params:
        zoo.check_settings(
            self.model.backbone,
            image_size=self.data.image_size,
            alpha=self.model.alpha,
            weights=self.model.weights,
        )
        return self


class ParamsError(StageError):
    """params.yaml is missing, unreadable or invalid."""


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read and validate the whole params file; raise ParamsError naming each bad key."""
    # YAML 1.2, as DVC reads and writes params.yaml: `1e-3` is a float here,
    # whereas a YAML 1.1 loader such as PyYAML's would return the string "1e-3".
    try:
        raw = YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path} not found; run the stage from the repository root") from None
    except YAMLError as error:
        raise ParamsError(f"{path} is not valid YAML: {error}") from None

    if not isinstance(raw, dict):
        raise ParamsError(f"{path} must contain a mapping of sections, got {type(raw).__name__}")

    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        lines = [_describe(problem) for problem in error.errors()]
        raise ParamsError(f"invalid {path}:\n" + "\n".join(f"  - {line}" for line in lines)) from None


def _describe(problem: dict) -> str:
    key = ".".join(str(part) for part in problem["loc"]) or "(top level)"
    kind = problem["type"]
    value = problem.get("input")

    if kind == "extra_forbidden":
        return f"{key}: unknown key (value {value!r}); check the spelling against params.yaml"
    if kind == "missing":
        return f"{key}: missing; add it to params.yaml"

    message = problem["msg"]
    if message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
        return f"{key}: {message}" if key != "(top level)" else message
    return f"{key} = {value!r}: {message}"
