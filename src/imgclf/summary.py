"""metrics/summary.md: the page a person reads first after a run."""

from __future__ import annotations

# (key in a model's scores, label, better direction)
HEADLINE = (
    ("accuracy", "accuracy", "higher"),
    ("balanced_accuracy", "balanced accuracy", "higher"),
    ("macro_f1", "macro F1", "higher"),
    ("roc_auc", "ROC AUC", "higher"),
    ("log_loss", "log loss", "lower"),
    ("ece", "expected calibration error", "lower"),
)


def _headline_value(scores: dict, key: str) -> float | None:
    if key == "macro_f1":
        return scores["macro"]["f1"]
    return scores.get(key)


def render_summary(
    report: dict,
    classes: list[str],
    *,
    n_bins: int,
    confused: tuple[str, str, int] | None,
    gallery_paths: list[str],
) -> str:
    """Return the Markdown summary of `metrics/evaluate.json`'s contents.

    `gallery_paths` are relative to the summary's folder.
    """
    final, head = report["final"], report["head"]
    lines = [
        "# Evaluation summary",
        "",
        f"Test split: {report['n_images']} images of {len(classes)} classes "
        f"({', '.join(classes)}). Fine-tuned is `models/model.keras`; head only is "
        "`models/head.keras`, before fine-tuning.",
        "",
        "| metric | fine-tuned | head only | change | better |",
        "|---|---|---|---|---|",
    ]

    headline = list(HEADLINE)
    top_k_keys = [key for key in final if key.startswith("top_") and key.endswith("_accuracy")]
    headline += [(key, key.replace("_", "-", 1).replace("_", " "), "higher") for key in top_k_keys]
    for key, label, better in headline:
        final_value, head_value = _headline_value(final, key), _headline_value(head, key)
        if final_value is None or head_value is None:
            continue
        if key == "ece":
            label = f"{label} ({n_bins} bins)"
        lines.append(
            f"| {label} | {final_value:.4f} | {head_value:.4f} | "
            f"{final_value - head_value:+.4f} | {better} |"
        )

    lines += ["", "## Most confused pair", ""]
    if confused is None:
        lines.append("The fine-tuned model classified every test image correctly.")
    else:
        true_label, predicted_label, count = confused
        support = final["per_class"][true_label]["support"]
        lines.append(
            f"{count} of the {support} `{true_label}` test images were predicted as "
            f"`{predicted_label}`."
        )

    lines += [
        "",
        "## Per class (fine-tuned)",
        "",
        "| class | precision | recall | F1 | images |",
        "|---|---|---|---|---|",
    ]
    for name, scores in final["per_class"].items():
        lines.append(
            f"| {name} | {scores['precision']:.4f} | {scores['recall']:.4f} | "
            f"{scores['f1']:.4f} | {scores['support']} |"
        )

    lines += [
        "",
        "## Most confident mistakes",
        "",
        "True label, predicted label and predicted probability, then the Grad-CAM heat "
        "map of the predicted class: red marks the regions that raised its score most.",
        "",
    ]
    lines += [f"![error gallery]({path})" for path in gallery_paths]
    return "\n".join(lines) + "\n"
