"""Data audit on cached backbone features: likely mislabels and outliers.

In: the view-0 pooled backbone features of every labelled image, (n, C) float,
with their class ids (n,) and the sorted class names. Out: out-of-fold class
probabilities, the suspect lists and the dict that the audit stage writes to
metrics/audit.json. Nothing here reads, writes, moves or deletes files.

Two kinds of suspects are reported:
- a likely mislabel is an image to which a linear model, trained without it,
  gives another class at least `mislabel_confidence` probability;
- an outlier is an image that is far from the images of every class, such as
  a "photo unavailable" placeholder or a picture of none of the classes.
An image that is an outlier suspect is not also listed as a mislabel suspect,
because a linear model's probabilities far from all training images are
extrapolation and suggest no class.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from imgclf.errors import StageError

# Inverse L2 penalties tried for the linear model, half a decade apart. The one
# whose out-of-fold probabilities have the lowest log loss is used, because the
# best penalty depends on the number of images and on how noisy the labels are.
REGULARIZATION_GRID = tuple(float(10.0**exponent) for exponent in np.arange(-4.0, 1.5, 0.5))
MAX_ITERATIONS = 2000  # of the lbfgs solver per fit

# Nearest images of a class that an image's distance to that class is averaged over.
OUTLIER_NEIGHBORS = 20
MAD_TO_SD = 1.4826  # median absolute deviation to standard deviation, for normal data
# Smallest spread of a class, in cosine distance, so that a class of identical
# feature vectors gives finite scores.
MIN_SPREAD = 1e-6
ROW_BLOCK = 4096  # images per block of the similarity matrix, to bound memory
DECIMALS = 4  # of the numbers in the report


def normalize_rows(features: np.ndarray) -> np.ndarray:
    """Return the rows scaled to unit L2 norm, (n, C) float32; an all-zero row stays zero."""
    values = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(values, axis=1, keepdims=True)  # (n, 1)
    return values / np.maximum(norms, np.finfo(np.float32).tiny)


def check_class_sizes(label_ids: np.ndarray, classes: list[str], folds: int) -> None:
    """Raise StageError unless there are two classes or more, each with at least `folds` images.

    Stratified k-fold puts every class in every fold only when each class has at
    least `folds` images. Otherwise a class is missing from some training folds,
    and the out-of-fold probabilities of its images there mean nothing.
    """
    if len(classes) < 2:
        raise StageError(
            f"the audit needs at least two classes, but the split manifests list only "
            f"{classes}; add a folder of images for another class"
        )
    counts = np.bincount(label_ids, minlength=len(classes))
    small = [(name, int(count)) for name, count in zip(classes, counts) if count < folds]
    if small:
        listed = ", ".join(f"{name!r} has {count}" for name, count in small)
        fewest = min(count for _, count in small)
        fix = (
            f"set audit.folds to {fewest} or less (e.g. dvc exp run -S audit.folds={fewest})"
            if fewest >= 2 else "a class needs at least 2 images for any audit"
        )
        raise StageError(
            f"audit.folds = {folds} needs at least {folds} images per class, but {listed}; "
            f"add images of those classes, or {fix}"
        )


@dataclass(frozen=True)
class OutOfFold:
    """Class probabilities of each image from the linear model of the folds that left it out."""

    probabilities: np.ndarray  # (n, n_classes) float64, rows sum to 1
    regularization: float  # C of the chosen LogisticRegression
    accuracy: float  # of the out-of-fold predictions against the given labels
    log_loss: float


def out_of_fold_probabilities(
    features: np.ndarray, label_ids: np.ndarray, classes: list[str], *, folds: int, seed: int
) -> OutOfFold:
    """Cross-validate a logistic regression on L2-normalized, standardized features.

    The images are split into `folds` stratified folds, shuffled with `seed`. Each
    fold's probabilities come from a model fitted on the other folds, with its
    standardization fitted there too. Every C in REGULARIZATION_GRID is tried on
    the same folds, and the probabilities with the lowest log loss are returned.
    Choosing one value out of eleven on the same folds biases that log loss
    slightly downwards.
    """
    check_class_sizes(label_ids, classes, folds)
    normalized = normalize_rows(features)  # (n, C)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    labels = np.arange(len(classes))

    best: OutOfFold | None = None
    for regularization in REGULARIZATION_GRID:
        model = make_pipeline(
            StandardScaler(), LogisticRegression(C=regularization, max_iter=MAX_ITERATIONS)
        )
        with warnings.catch_warnings():
            # A weakly penalized fit on separable classes may stop short of the optimum.
            # Its probabilities are still valid, and the log loss decides whether they are used.
            warnings.simplefilter("ignore", ConvergenceWarning)
            probabilities = cross_val_predict(
                model, normalized, label_ids, cv=splitter, method="predict_proba"
            )  # (n, n_classes)
        # float32 features give float32 rows, which sum to 1 only within rounding.
        probabilities = np.asarray(probabilities, dtype=np.float64)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        loss = float(log_loss(label_ids, probabilities, labels=labels))
        if best is None or loss < best.log_loss:
            accuracy = float(np.mean(probabilities.argmax(axis=1) == label_ids))
            best = OutOfFold(probabilities, regularization, accuracy, loss)
    assert best is not None  # REGULARIZATION_GRID is not empty
    return best


@dataclass(frozen=True)
class MislabelSuspect:
    index: int  # row in the features given to the audit
    label_id: int
    suggested_id: int  # the most probable class other than the label
    suggested_probability: float
    label_probability: float


def find_mislabels(
    probabilities: np.ndarray, label_ids: np.ndarray, confidence: float
) -> list[MislabelSuspect]:
    """Return the images whose most probable other class has at least `confidence` probability.

    `probabilities` are out-of-fold, (n, n_classes). The suspects are sorted by
    that probability, highest first, and by row among equal probabilities.
    """
    others = np.array(probabilities, dtype=np.float64)  # (n, n_classes)
    rows = np.arange(len(label_ids))
    others[rows, label_ids] = -np.inf
    suggested = others.argmax(axis=1)  # (n,)
    suggested_probability = probabilities[rows, suggested]

    flagged = np.flatnonzero(suggested_probability >= confidence)
    ranked = flagged[np.argsort(-suggested_probability[flagged], kind="stable")]
    return [
        MislabelSuspect(
            index=int(i),
            label_id=int(label_ids[i]),
            suggested_id=int(suggested[i]),
            suggested_probability=float(suggested_probability[i]),
            label_probability=float(probabilities[i, label_ids[i]]),
        )
        for i in ranked
    ]


@dataclass(frozen=True)
class OutlierScores:
    """How far each image is from its nearest class, in that class's own spreads."""

    scores: np.ndarray  # (n,) float64
    nearest_ids: np.ndarray  # (n,) the class at which the minimum is reached


def outlier_scores(
    features: np.ndarray, label_ids: np.ndarray, classes: list[str],
    neighbors: int = OUTLIER_NEIGHBORS,
) -> OutlierScores:
    """Score each image by how much farther it is from every class than that class's own images.

    With x the L2-normalized features, for each class c:
    - d_c(x) is the mean cosine distance (1 - cosine similarity) from x to its
      k nearest images labelled c, leaving x itself out, with
      k = min(`neighbors`, images in c - 1);
    - median_c and MAD_c are the median and median absolute deviation of d_c
      over the images labelled c;
    - z_c(x) = (d_c(x) - median_c) / (1.4826 * MAD_c), a robust z-score.
    The score is the minimum of z_c(x) over all classes. A score of 5 means
    that even for its nearest class, the image is 5 robust standard deviations
    farther from that class's images than that class's typical image is. A
    mislabelled image is close to the images of its true class and scores low.

    Feature vectors are compared by direction only, so images whose features
    differ only in scale are treated as identical.
    NOTE: k or more near-copies of one odd image with the same label are each
    other's nearest images, so they score low. The prepare stage drops near duplicates.
    """
    counts = np.bincount(label_ids, minlength=len(classes))
    if len(classes) < 2 or counts.min() < 2:
        raise StageError(
            f"outlier scores need two classes or more with at least 2 images each, but the "
            f"counts are {dict(zip(classes, counts.tolist()))}; add images of the small classes"
        )
    normalized = normalize_rows(features)  # (n, C)
    z_scores = np.empty((len(normalized), len(classes)))  # (n, n_classes)
    for class_id in range(len(classes)):
        distances = _neighbor_distances(normalized, np.flatnonzero(label_ids == class_id), neighbors)
        own = distances[label_ids == class_id]
        median = np.median(own)
        spread = max(MAD_TO_SD * float(np.median(np.abs(own - median))), MIN_SPREAD)
        z_scores[:, class_id] = (distances - median) / spread
    return OutlierScores(scores=z_scores.min(axis=1), nearest_ids=z_scores.argmin(axis=1))


def _neighbor_distances(normalized: np.ndarray, members: np.ndarray, neighbors: int) -> np.ndarray:
    """Return each image's mean cosine distance to its nearest `members`, itself left out, (n,)."""
    k = min(neighbors, len(members) - 1)
    # float64, because the z-scores divide these distances' small differences by a small
    # spread, which magnifies float32 rounding.
    member_features = normalized[members].astype(np.float64)  # (m, C)
    # Column of each image among the members, or -1 for images of other classes.
    column = np.full(len(normalized), -1)
    column[members] = np.arange(len(members))

    distances = np.empty(len(normalized))
    for start in range(0, len(normalized), ROW_BLOCK):
        stop = min(start + ROW_BLOCK, len(normalized))
        similarity = normalized[start:stop].astype(np.float64) @ member_features.T  # (block, m)
        own = np.flatnonzero(column[start:stop] >= 0)
        similarity[own, column[start:stop][own]] = -np.inf  # not its own neighbour
        nearest = np.partition(similarity, -k, axis=1)[:, -k:]  # (block, k)
        distances[start:stop] = 1.0 - nearest.mean(axis=1)
    return distances


@dataclass(frozen=True)
class OutlierSuspect:
    index: int  # row in the features given to the audit
    label_id: int
    nearest_id: int  # the class the image is least far from
    score: float  # see outlier_scores


def find_outliers(
    scores: OutlierScores, label_ids: np.ndarray, threshold: float
) -> list[OutlierSuspect]:
    """Return the images with a score of at least `threshold`, highest score first."""
    flagged = np.flatnonzero(scores.scores >= threshold)
    ranked = flagged[np.argsort(-scores.scores[flagged], kind="stable")]
    return [
        OutlierSuspect(
            index=int(i),
            label_id=int(label_ids[i]),
            nearest_id=int(scores.nearest_ids[i]),
            score=float(scores.scores[i]),
        )
        for i in ranked
    ]


@dataclass(frozen=True)
class AuditedImages:
    """The images the audit scored, in the row order of the features."""

    paths: list[str]  # as the split manifests list them
    splits: list[str]  # train, val or test
    label_ids: np.ndarray  # (n,) int
    classes: list[str]  # sorted; a class id indexes this list


def build_report(
    images: AuditedImages, fit: OutOfFold, mislabels: list[MislabelSuspect],
    outliers: list[OutlierSuspect], settings: dict[str, float | int],
) -> dict:
    """Return the contents of metrics/audit.json.

    Counts come first, overall and per split, then the linear model's fit, then
    the two suspect lists in the order given (highest score first). Mislabel
    suspects that are also outlier suspects are left out of the mislabel list.
    """
    outlier_rows = {suspect.index for suspect in outliers}
    mislabels = [suspect for suspect in mislabels if suspect.index not in outlier_rows]
    classes = images.classes

    mislabel_entries = [
        {
            "path": images.paths[s.index],
            "split": images.splits[s.index],
            "label": classes[s.label_id],
            "suggested_label": classes[s.suggested_id],
            "suggested_probability": round(s.suggested_probability, DECIMALS),
            "label_probability": round(s.label_probability, DECIMALS),
        }
        for s in mislabels
    ]
    outlier_entries = [
        {
            "path": images.paths[s.index],
            "split": images.splits[s.index],
            "label": classes[s.label_id],
            "nearest_class": classes[s.nearest_id],
            "score": round(s.score, DECIMALS),
            "predicted_label": classes[int(fit.probabilities[s.index].argmax())],
            "predicted_probability": round(float(fit.probabilities[s.index].max()), DECIMALS),
        }
        for s in outliers
    ]
    return {
        **_counts(images.splits, mislabel_entries, outlier_entries),
        "per_split": {
            split: _counts(
                [name for name in images.splits if name == split],
                [e for e in mislabel_entries if e["split"] == split],
                [e for e in outlier_entries if e["split"] == split],
            )
            for split in dict.fromkeys(images.splits)
        },
        "classes": classes,
        "settings": settings,
        "linear_model": {
            "C": fit.regularization,
            "out_of_fold_accuracy": round(fit.accuracy, DECIMALS),
            "out_of_fold_log_loss": round(fit.log_loss, DECIMALS),
        },
        "mislabel_suspects": mislabel_entries,
        "outlier_suspects": outlier_entries,
    }


def _counts(splits: list[str], mislabels: list[dict], outliers: list[dict]) -> dict[str, int]:
    return {
        "n_images": len(splits),
        "n_mislabel_suspects": len(mislabels),
        "n_outlier_suspects": len(outliers),
    }


def grid_suspects(report: dict, size: int) -> list[dict]:
    """Return up to `size` suspects for the image grid, taken in turn from the top of each list.

    Alternating keeps the outliers visible when there are many more mislabel
    suspects, and the other way round. Each item is a report entry with a
    `kind` key added: "mislabel" or "outlier".
    """
    queues = [
        [{**entry, "kind": "mislabel"} for entry in report["mislabel_suspects"]],
        [{**entry, "kind": "outlier"} for entry in report["outlier_suspects"]],
    ]
    chosen: list[dict] = []
    for position in range(max(len(queue) for queue in queues)):
        for queue in queues:
            if position < len(queue) and len(chosen) < size:
                chosen.append(queue[position])
    return chosen


def tile_caption(suspect: dict, max_name: int = 28) -> str:
    """Return a grid tile's title: file name, label, and the suspected class or "outlier" with its score."""
    name = suspect["path"].replace("\\", "/").rsplit("/", 1)[-1]
    if len(name) > max_name:
        keep = max_name - 3
        name = name[: math.ceil(keep / 2)] + "..." + name[-(keep // 2):]
    if suspect["kind"] == "mislabel":
        verdict = f"likely {suspect['suggested_label']} (p={suspect['suggested_probability']:.3f})"
    else:
        verdict = f"outlier (score {suspect['score']:.1f})"
    return f"{name}\nlabel: {suspect['label']}\n{verdict}"
