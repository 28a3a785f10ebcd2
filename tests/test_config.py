from pathlib import Path

import pytest

from imgclf.config import ParamsError, load_params

PROJECT_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def write_params(tmp_path: Path, old: str, new: str) -> Path:
    text = PROJECT_PARAMS.read_text()
    assert old in text, f"{old!r} not in params.yaml"
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_project_params_are_valid():
    params = load_params(PROJECT_PARAMS)
    assert params.model.backbone == "mobilenet_v2"
    assert params.finetune.lr == pytest.approx(1e-5)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("  lr: 0.001", "  lrr: 0.001", "train_head.lrr: unknown key"),
        ("  lr: 0.001", "  lr: -0.001", "train_head.lr = -0.001"),
        ("  lr: 0.001", "  lr: fast", "train_head.lr = 'fast'"),
        ("  epochs: 10", "  epochs: 2.5", "train_head.epochs = 2.5"),
        ("  epochs: 10", "  epochs: true", "train_head.epochs = True"),
        ("  val: 0.15", "  val: 0.9", "leaves no images for training"),
        ("backbone: mobilenet_v2", "backbone: mobilenet_v9", "model.backbone = 'mobilenet_v9'"),
        ("image_size: 224", "image_size: 200", "mobilenet_v2 has ImageNet weights only for sizes"),
        ("image_size: 224", "image_size: 16", "data.image_size = 16"),
        ("alpha: 1.0", "alpha: 0.3", "mobilenet_v2 has ImageNet weights only for alpha"),
        ("optimizer: adam", "optimizer: adamw", "train_head.optimizer = 'adamw'"),
        ("seed: 42", "seed: -1", "seed = -1"),
        ("  unfreeze: 30", "  unfreeze: 0", "finetune.unfreeze = 0"),
    ],
)
def test_invalid_value_names_key(tmp_path, old, new, expected):
    path = write_params(tmp_path, old, new)
    with pytest.raises(ParamsError) as raised:
        load_params(path)
    assert expected in str(raised.value)


def test_missing_key_is_reported(tmp_path):
    path = write_params(tmp_path, "  class_weight: none", "")
    path.write_text(path.read_text().replace("  # none, or balanced (inverse class frequency)", ""))
    with pytest.raises(ParamsError, match=r"train_head.class_weight: missing"):
        load_params(path)


def test_exponent_float_is_accepted(tmp_path):
    # DVC writes `-S train_head.lr=1e-4` back as 1e-4, a float in YAML 1.2.
    path = write_params(tmp_path, "  lr: 0.001", "  lr: 1e-4")
    assert load_params(path).train_head.lr == pytest.approx(1e-4)


def test_alpha_free_backbone_rejects_alpha(tmp_path):
    path = write_params(tmp_path, "backbone: mobilenet_v2", "backbone: resnet50")
    path.write_text(path.read_text().replace("alpha: 1.0", "alpha: 0.5"))
    with pytest.raises(ParamsError, match="resnet50 has no width multiplier"):
        load_params(path)


def test_other_sizes_allowed_without_weights(tmp_path):
    path = write_params(tmp_path, "image_size: 224", "image_size: 200")
    path.write_text(path.read_text().replace("weights: imagenet", "weights: none"))
    assert load_params(path).data.image_size == 200


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")


def test_non_mapping_is_reported(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ParamsError, match="must contain a mapping"):
        load_params(path)
