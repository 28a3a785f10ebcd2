"""Profile of the features stage: the extractor's throughput under each input path.

In: a project root whose data/split/train.csv lists prepared JPEGs, and its params.yaml.
Out: images per second, printed and written as JSON with --output, for the extractor
(backbone up to the cut, then the top and pooling) fed in five ways, one after the other
in one process:

  in-memory tensors through a tf.function loop (as bench/backbone_ceiling.py),
  in-memory tensors through Keras `predict`,
  decoded JPEGs from a cached tf.data pipeline through `predict` (view 0),
  the same with the augmentation layers mapped over the batches (views 1 and up),
  and the augmentation alone, iterating the augmented dataset without the model.

Each figure is the second of two passes over the same images, so the first pass warms
up the graph and the tf.data cache.

Run from the repository root:
  PYTHONPATH=src python bench/features_profile.py --root . --output bench/results/features_profile.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def images_per_second(run, n_images: int) -> float:
    """Run `run` twice and return the images per second of the second pass."""
    run()
    started = time.perf_counter()
    run()
    return round(n_images / (time.perf_counter() - started), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="project root")
    parser.add_argument("--images", type=int, default=1024, help="training images to use")
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    os.chdir(args.root)

    import numpy as np
    import tensorflow as tf

    from imgclf import config
    from imgclf.data import make_dataset
    from imgclf.features import _augmented, build_extractor, find_cut
    from imgclf.manifest import class_names, read_entries
    from imgclf.model import build_augmentation, build_classifier, find_backbone

    params = config.load_params()
    size, batch_size = params.data.image_size, params.features.batch_size
    entries = read_entries(config.split_manifest("train"))[: args.images]
    n = len(entries)
    classes = class_names(read_entries(config.split_manifest("train")))
    model = build_classifier(params.model, image_size=size, n_classes=len(classes))
    extractor = build_extractor(model, find_cut(find_backbone(model), params.finetune.unfreeze))

    tensors = np.random.default_rng(0).uniform(0, 255, (n, size, size, 3)).astype(np.float32)
    forward = tf.function(lambda batch: extractor(batch, training=False))
    decoded = make_dataset(entries, classes, image_size=size, batch_size=batch_size)
    augmented = _augmented(decoded, build_augmentation(params.augment, seed=params.seed + 100))

    results = {
        "images": n,
        "batch_size": batch_size,
        "tf_function_in_memory": images_per_second(
            lambda: [forward(tensors[i : i + batch_size]) for i in range(0, n, batch_size)], n
        ),
        "predict_in_memory": images_per_second(
            lambda: extractor.predict(tensors, batch_size=batch_size, verbose=0), n
        ),
        "predict_decoded_jpegs": images_per_second(
            lambda: extractor.predict(decoded, verbose=0), n
        ),
        "predict_augmented": images_per_second(
            lambda: extractor.predict(augmented, verbose=0), n
        ),
        "augmentation_alone": images_per_second(lambda: [batch for batch in augmented], n),
    }
    print(json.dumps(results, indent=2))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
