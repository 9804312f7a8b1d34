"""The model card: what the model is for, what it was trained and tested on, how well, and its limits."""

from cancer_classifier.chest_ct.modeling import intended_use

HEADLINE_ORDER = ("roc_auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "jaccard", "brier")


def known_limits(report: dict, data: dict) -> list[str]:
    limits = ["Not a medical device and not validated for clinical use."]
    if report["demo"]:
        limits.append("Trained and tested on synthetic phantoms: it says nothing about real CT images.")
    if report["shortcut_warning"]:
        limits.append(
            f"Shortcut warning: a metadata-only model (no anatomy) reaches ROC-AUC "
            f"{report['baseline']['metrics']['roc_auc']:.3f} against this model's {report['metrics']['roc_auc']:.3f}; "
            "the classes can be told apart by image source, so this score is weak evidence of pathology."
        )
    if report["test_images"] < 100:
        limits.append(
            f"Small test split ({report['test_images']} images): read the intervals, not the point estimates."
        )
    limits.append(
        "Slices are classified one at a time, without patient-level grouping beyond near-duplicate detection."
    )
    return limits


def build_model_card(report: dict, data: dict, base: dict, training: dict) -> dict:
    return {
        "model": "VGG16 transfer learning, chest CT slice classifier",
        "intended_use": intended_use(report["demo"]),
        "demo": report["demo"],
        "classes": report["classes"],
        "data": {
            "source": data["dataset"]["source"],
            "files_scanned": data["files_scanned"],
            "images_after_deduplication": data["images_kept"],
            "exact_duplicates_removed": data["exact_duplicates_removed"],
            "conflicting_label_groups_excluded": len(data["conflicting_labels"]),
            "rejected_files": len(data["rejected"]),
            "counts": data["counts"],
            "split_method": data["split_method"],
        },
        "base_weights": {k: base[k] for k in ("weights", "description", "sha256") if k in base},
        "training": {"image_size": base["image_size"], "harmonised": report["harmonised"], **training},
        "evaluation": {
            "split": report["split"],
            "test_images": report["test_images"],
            "averaging": report["averaging"],
            "metrics": report["metrics"],
            "ci95": report["ci95"],
            "per_class": report["per_class"],
            "variant": report["variant"],
        },
        "external_test": report["external"],
        "serving_variants": report["serving_variants"],
        "model_sha256": report["model_sha256"],  # the app serves another variant only for this very file
        "shortcut_baseline": report["baseline"] | {"warning": report["shortcut_warning"]},
        "model_input_baseline": report["input_baseline"],
        "known_limits": known_limits(report, data),
    }


def _interval(bounds: list[float]) -> str:
    return f"{bounds[0]:.3f} – {bounds[1]:.3f}"


def render_markdown(card: dict) -> str:
    evaluation, baseline, inputs = card["evaluation"], card["shortcut_baseline"], card["model_input_baseline"]
    rows = "\n".join(
        f"| {name} | {evaluation['metrics'][name]:.3f} | {_interval(evaluation['ci95'][name])} |"
        for name in HEADLINE_ORDER
    )
    counts = "\n".join(
        f"| {split} | " + " | ".join(str(n) for n in per_class.values()) + " |"
        for split, per_class in card["data"]["counts"].items()
    )
    weights, training = card["base_weights"], card["training"]
    weights_hash = f", sha256 {weights['sha256']}" if "sha256" in weights else ""
    preprocessing = (
        "harmonised (grayscale, intensity stretch, cropped to the body, padded square)"
        if training["harmonised"]
        else "resized only (no harmonisation)"
    )
    warning = " **Warning: close to the model.**" if baseline["warning"] else ""
    serving = card["serving_variants"]
    agreement = "\n".join(
        f"| {variant} | {split} | {a['images']} | {a['label_changes']} | {a['max_probability_difference']:.4f} | "
        f"{a['median_probability_difference']:.4f} | {a['roc_auc_change']:+.4f} |"
        for variant, by_split in serving["variants"].items()
        for split, a in by_split.items()
    )
    external = card["external_test"]
    external_text = (
        f"""
## External test ({external["images"]} images from `{external["source"]}`, de-duplicated against all ingested data)

| metric | value | 95% bootstrap interval |
|---|---|---|
"""
        + "\n".join(
            f"| {name} | {external['metrics'][name]:.3f} | {_interval(external['ci95'][name])} |"
            for name in HEADLINE_ORDER
        )
        + "\n"
        if external
        else ""
    )
    limits = "\n".join(f"- {limit}" for limit in card["known_limits"])
    return f"""# Model card — {card["model"]}

> **{card["intended_use"]}**

## Data
Source: `{card["data"]["source"]}`. {card["data"]["files_scanned"]} files scanned,
{card["data"]["rejected_files"]} rejected, {card["data"]["exact_duplicates_removed"]} exact duplicates removed,
{card["data"]["conflicting_label_groups_excluded"]} conflicting-label group(s) excluded:
{card["data"]["images_after_deduplication"]} distinct images.
Split: {card["data"]["split_method"]}.

| split | {" | ".join(card["classes"])} |
|---|{"---|" * len(card["classes"])}
{counts}

## Model and training
Base weights: {weights["description"]} (`{weights["weights"]}`{weights_hash}).
Input size {training["image_size"]} px, {preprocessing}; head `{training["head"]}` on cached features
({training["feature_views"]} view(s) per image, computed by {training["feature_variant"]}),
chosen for the {training["head_selection"]};
{training["fine_tune_epochs"]} fine-tuning epochs; seed {training["seed"]}.

## Evaluation ({evaluation["split"]}, {evaluation["test_images"]} images, {evaluation["averaging"]})
Scored through the app's own path in {evaluation["variant"]} (engine/precision); other variants below.

| metric | value | 95% bootstrap interval |
|---|---|---|
{rows}

Shortcut baseline ({baseline["model"]}): ROC-AUC {baseline["metrics"]["roc_auc"]:.3f}
({_interval(baseline["ci95"]["roc_auc"])}).{warning}
Model-input baseline ({inputs["model"]}): ROC-AUC {inputs["metrics"]["roc_auc"]:.3f}
({_interval(inputs["ci95"]["roc_auc"])}): what is left of the source cues in what the model sees.
{external_text}
## Served variants (engine/precision of the VGG16 base)
Servable: {", ".join(serving["servable"])}. {serving["verdict"]}.

| variant | split | images | labels changed | largest probability difference | median | ROC-AUC change |
|---|---|---|---|---|---|---|
{agreement}

## Known limits
{limits}
"""
