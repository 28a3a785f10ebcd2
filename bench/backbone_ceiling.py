"""Forward throughput ceiling of the frozen backbone: images/s with no input pipeline at all.

In: params.yaml (model.backbone, model.alpha, model.weights, data.image_size,
features.batch_size). Out: a JSON summary on stdout and, with --output, in a file.

The model is the classifier of `imgclf.model.build_classifier` cut at its pooling
layer: Preprocess -> backbone (training=False) -> GlobalAveragePooling2D. It runs
on one float32 batch of random pixels in [0, 255] that is already in memory, so
no decoding, augmentation or file reading is timed. The features stage does all
of that as well, so this number is the most it can reach on the same machine.
After --warmup batches, each of --repeats timed repeats runs --batches batches;
the result is the median repeat.

Run from the repository root:
  PYTHONPATH=src python bench/backbone_ceiling.py --output bench/results/ceiling.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]


# NOTE: the model runs under Keras' default float32 policy on one device, as the features
# stage does when this was written. If that stage adopts imgclf.compute.setup_compute
# (mixed precision on GPUs), call it here too, or the ratio compares different dtypes.
def build_pooled_model(params):
    """Return the classifier cut at its pooling layer.

    (batch, size, size, 3) raw RGB -> (batch, channels) pooled backbone output.
    """
    import keras

    from imgclf.model import build_classifier

    classifier = build_classifier(params.model, image_size=params.data.image_size, n_classes=2)
    return keras.Model(classifier.input, classifier.get_layer("pool").output, name="pooled")


def time_forward(model, batch, *, batches: int, warmup: int, repeats: int) -> list[float]:
    """Return images/s of each timed repeat of `batches` forward passes over `batch`."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def forward(images):
        return model(images, training=False)  # (batch, channels)

    for _ in range(warmup):
        forward(batch).numpy()  # .numpy() waits for the result, also on a GPU

    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(batches):
            forward(batch).numpy()
        seconds = time.perf_counter() - started
        rates.append(batches * int(batch.shape[0]) / seconds)
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml",
                        help="params file to read (default: params.yaml of this repository)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed repeats; the median is reported (default: 5)")
    parser.add_argument("--batches", type=int, default=10,
                        help="forward passes per timed repeat (default: 10)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed forward passes before the first repeat (default: 3)")
    parser.add_argument("--batch-size", type=int,
                        help="images per forward pass (default: features.batch_size)")
    parser.add_argument("--output", type=Path, help="write the JSON summary here as well")
    args = parser.parse_args()
    for name in ("repeats", "batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} = {getattr(args, name)}: use 1 or more")
    if args.warmup < 0:
        parser.error(f"--warmup = {args.warmup}: use 0 or more")

    import numpy as np
    import tensorflow as tf

    from imgclf import config

    params = config.load_params(args.params)
    batch_size = args.batch_size or params.features.batch_size
    size = params.data.image_size

    model = build_pooled_model(params)
    rng = np.random.default_rng(0)
    # (batch_size, size, size, 3) float32 raw RGB in [0, 255], as the features stage feeds it
    batch = tf.constant(rng.uniform(0, 255, (batch_size, size, size, 3)).astype(np.float32))

    rates = time_forward(model, batch, batches=args.batches, warmup=args.warmup,
                         repeats=args.repeats)
    summary = {
        "benchmark": "backbone_ceiling",
        "params": str(args.params),
        "backbone": params.model.backbone,
        "alpha": params.model.alpha,
        "weights": params.model.weights,
        "image_size": size,
        "batch_size": batch_size,
        "output_channels": int(model.output_shape[-1]),
        "warmup_batches": args.warmup,
        "batches_per_repeat": args.batches,
        "images_per_s": round(statistics.median(rates), 2),
        "repeats_images_per_s": [round(rate, 2) for rate in rates],
        "machine": describe_machine(),
    }

    text = json.dumps(summary, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
