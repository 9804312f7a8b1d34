"""Features and training: the feature cache, standardisation that survives dead units, balanced
class weights, head selection by cross-validation, the drift reference, and fine-tuning in bfloat16."""

import dataclasses

import keras
import numpy as np
import pytest
import yaml
from sklearn.linear_model import LogisticRegression

from cancer_classifier.chest_ct.components.data_ingestion import DataIngestion
from cancer_classifier.chest_ct.components.dataset import split_files
from cancer_classifier.chest_ct.components.features import Features, load_features
from cancer_classifier.chest_ct.components.heads import (
    Candidate,
    HeadTrainer,
    class_weights,
    epoch_step,
    mean_curve,
    select_head,
    set_standardisation,
    standardisation,
)
from cancer_classifier.chest_ct.components.prepare_base_model import PrepareBaseModel
from cancer_classifier.chest_ct.components.training import Training
from cancer_classifier.chest_ct.modeling import build_head, load_classifier
from cancer_classifier.chest_ct.scoring import VARIANTS
from cancer_classifier.core.errors import StageInputError
from cancer_classifier.core.io import load_json
from tests.conftest import REPO
from tests.parity import COMPUTABLE


def test_a_feature_constant_in_training_does_not_explode_on_new_data():
    rng = np.random.default_rng(0)
    features = rng.normal(5, 2, (50, 512)).astype("float32")
    features[:, 2] = 0  # a ReLU unit that never fired on the training images
    head = build_head("logistic", 2, 8, 0.0)
    set_standardisation(head, *standardisation(features))
    layer = head.get_layer("feature_norm")
    trained = layer(features).numpy()[:, :4]
    assert np.allclose(trained[:, [0, 1, 3]].mean(axis=0), 0, atol=1e-4)
    assert np.allclose(trained[:, [0, 1, 3]].std(axis=0), 1, atol=1e-2)
    unseen = layer(np.full((1, 512), 5, dtype="float32")).numpy()
    assert np.abs(unseen).max() < 10  # plain adapt() divides by ~0 here and gives about 1e7


def test_class_weights_balance_the_loss():
    labels = np.array([0] * 30 + [1] * 10)
    weights = class_weights(labels, 2)
    assert weights[0] * 30 == weights[1] * 10
    assert np.isclose(sum(weights[c] * (labels == c).sum() for c in weights), len(labels))


def separable_features(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features in which eight dimensions per class carry the class, labels, and groups of two rows each."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    features = rng.normal(0, 1, (n, 512)).astype("float32")
    for c in range(classes):
        features[labels == c, 8 * c : 8 * c + 8] += 2.0
    return features, labels, np.arange(n) // 2


def test_the_logistic_head_serves_what_scikit_learn_fitted(trained_project):
    config = trained_project.training()
    for classes in (2, 3):
        features, labels, _ = separable_features(90, classes, classes)
        head, _ = HeadTrainer(config, classes, 8, 0.1).fit(Candidate("logistic", 0.5), features, labels)
        mean, variance = standardisation(features)
        reference = LogisticRegression(C=0.5, max_iter=5000, class_weight="balanced").fit(
            (features - mean) / np.sqrt(variance), labels
        )
        expected = reference.predict_proba((features - mean) / np.sqrt(variance))
        np.testing.assert_allclose(head.predict(features, verbose=0), expected, atol=1e-4)


def test_the_mlp_stops_early_and_keeps_its_best_epoch(trained_project):
    """Validation labels opposite to the training ones: the validation loss is lowest before training
    has learned much, so the loop stops after the patience and restores that best epoch."""
    config = dataclasses.replace(trained_project.training(), epochs=40, early_stopping_patience=3)
    features, labels, _ = separable_features(80, 2, 3)
    validation = (features[:20], 1 - labels[:20])
    keras.utils.set_random_seed(0)  # the same initial weights for every fit below
    head, best = HeadTrainer(config, 2, 8, 0.0).fit(Candidate("mlp"), features, labels, validation)
    losses = []  # the same training, epoch by epoch, to know the best epoch independently
    for epochs in range(1, best + config.early_stopping_patience + 1):
        keras.utils.set_random_seed(0)
        again, _ = HeadTrainer(config, 2, 8, 0.0).fit(Candidate("mlp"), features, labels, epochs=epochs)
        losses.append(float(np.mean(keras.losses.sparse_categorical_crossentropy(validation[1], again(validation[0])))))
    assert 1 <= best < config.epochs and best == int(np.argmin(losses)) + 1
    restored = float(np.mean(keras.losses.sparse_categorical_crossentropy(validation[1], head(validation[0]))))
    assert restored == pytest.approx(losses[best - 1], rel=1e-5)


def test_a_compiled_epoch_steps_as_keras_train_on_batch_with_class_weights():
    """The MLP's compiled epoch makes the very updates of Keras's own loop (Adam, class weights), and
    reports the epoch's training loss as Keras does: the batches' losses, weighted by batch size."""
    features, labels, _ = separable_features(70, 3, 2)
    order, weights = np.random.default_rng(1).permutation(70), class_weights(labels, 3)
    keras.utils.set_random_seed(0)
    ours = build_head("mlp", 3, 8, 0.0)
    reference = build_head("mlp", 3, 8, 0.0)
    for head in (ours, reference):
        set_standardisation(head, *standardisation(features))
    reference.set_weights(ours.get_weights())
    row_weights = np.array([weights[label] for label in labels], "float32")
    step = epoch_step(ours, keras.optimizers.Adam(0.01), 16)
    train_loss, loss = step(features, labels, row_weights, order, features, labels)
    reference.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    batch_losses = []
    for start in range(0, 70, 16):
        rows = order[start : start + 16]
        weighted = keras.losses.SparseCategoricalCrossentropy()
        batch_losses.append(float(weighted(labels[rows], reference(features[rows]), sample_weight=row_weights[rows])))
        reference.train_on_batch(features[rows], labels[rows], class_weight=weights)
    sizes = [len(order[start : start + 16]) for start in range(0, 70, 16)]
    assert float(train_loss) == pytest.approx(np.average(batch_losses, weights=sizes), rel=1e-4)
    for got, expected in zip(ours.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    after = np.mean(keras.losses.sparse_categorical_crossentropy(labels, reference(features)))
    assert float(loss) == pytest.approx(float(after), rel=1e-4)
    # dropout is on while it trains: the same epoch from the same start moves the weights elsewhere
    dropping = build_head("mlp", 3, 8, 0.5)
    set_standardisation(dropping, *standardisation(features))
    dropping.set_weights(reference.get_weights())
    keras.utils.set_random_seed(0)
    start = [w.copy() for w in dropping.get_weights()]
    epoch_step(dropping, keras.optimizers.Adam(0.01), 16)(features, labels, row_weights, order, features, labels)
    without = build_head("mlp", 3, 8, 0.0)
    set_standardisation(without, *standardisation(features))
    without.set_weights(start)
    epoch_step(without, keras.optimizers.Adam(0.01), 16)(features, labels, row_weights, order, features, labels)
    assert not np.allclose(dropping.get_weights()[3], without.get_weights()[3])


def test_head_selection_cross_validates_every_candidate_and_refits_the_best(trained_project):
    config = dataclasses.replace(trained_project.training(), epochs=10)
    features, labels, groups = separable_features(80, 2, 7)
    trainer = HeadTrainer(config, 2, 8, 0.1)
    head, report = select_head(trainer, features, labels, groups, folds=4, seed=0)
    assert set(report["candidates"]) == {"logistic C=0.01", "logistic C=0.1", "logistic C=1", "mlp"}
    best = max(report["candidates"].values(), key=lambda r: r["cv_roc_auc"])["cv_roc_auc"]
    assert report["candidates"][report["chosen"]]["cv_roc_auc"] == best
    assert report["rows"] == 80 and report["refit"] == "train + val" and "cross-validated" in report["reason"]
    assert best > 0.95  # the classes are separable in the first dimensions
    assert (head.predict(features, verbose=0).argmax(axis=1) == labels).mean() > 0.9
    # the MLP's losses per epoch in the folds, averaged over the folds still training at each epoch
    curve = report["curve"]
    assert curve["epoch"] == list(range(1, len(curve["epoch"]) + 1)) and len(curve["epoch"]) <= config.epochs
    assert len(curve["train_loss"]) == len(curve["val_loss"]) == len(curve["folds"]) == len(curve["epoch"])
    assert curve["folds"][0] == 4 and curve["folds"] == sorted(curve["folds"], reverse=True)
    assert np.isfinite(curve["train_loss"] + curve["val_loss"]).all()
    assert curve["train_loss"][-1] < curve["train_loss"][0]
    logistic_only = dataclasses.replace(config, head_candidates=("logistic",))
    assert select_head(HeadTrainer(logistic_only, 2, 8, 0.1), features, labels, groups, 4, 0)[1]["curve"] is None


def test_mean_curve_averages_the_folds_that_reached_each_epoch():
    curve = mean_curve([[(1.0, 2.0), (0.5, 1.0), (0.25, 1.5)], [(3.0, 4.0)]])
    assert curve == {
        "epoch": [1, 2, 3], "train_loss": [2.0, 0.5, 0.25], "val_loss": [3.0, 1.0, 1.5], "folds": [2, 1, 1]
    }
    assert mean_curve([]) == {"epoch": [], "train_loss": [], "val_loss": [], "folds": []}


def test_too_few_image_groups_for_the_folds_is_a_clear_error(trained_project):
    features, labels, _ = separable_features(40, 2, 1)
    groups = np.where(labels == 0, np.arange(40) % 5, 100)  # class 1: one group of near-duplicates
    with pytest.raises(StageInputError, match="class 1 has 1 distinct image group.*training.head.cv_folds"):
        select_head(HeadTrainer(trained_project.training(), 2, 8, 0.1), features, labels, groups, folds=3, seed=0)


def test_features_are_cached_per_view_and_the_head_trains_on_them(trained_project):
    out = trained_project.features().root_dir
    cached, info = load_features(out), load_json(out / "features_info.json")
    train_files, train_labels = split_files(trained_project.training().data_dir, "train")
    views = trained_project.features().views
    assert cached["train"].shape == (views * len(train_files), 512)
    assert np.array_equal(cached["train_labels"], np.tile(train_labels, views))
    assert info["forward_passes"] == views * len(train_files) + len(cached["val"])
    assert info["variant"] in {str(v) for v in VARIANTS}


def read_curve(path) -> tuple[list[int], list[float]]:
    """A dvclive curve file: its steps and values (columns step and the metric)."""
    header, *rows = path.read_text().splitlines()
    assert header.split("\t") == ["step", path.stem]
    return [int(r.split("\t")[0]) for r in rows], [float(r.split("\t")[1]) for r in rows]


def test_training_logs_the_head_curves_through_dvclive_where_dvc_yaml_plots_them(trained_project):
    out = trained_project.training().root_dir
    curve = load_json(out / "history.json")["head_selection"]["curve"]
    for split in ("train", "val"):
        steps, values = read_curve(out / f"dvclive/plots/metrics/head/{split}/loss.tsv")
        assert steps == curve["epoch"] and values == pytest.approx(curve[f"{split}_loss"])
    assert not (out / "dvclive/plots/metrics/fine_tune").exists()  # the tiny project does not fine-tune
    plotted = {
        file
        for plot in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
        if isinstance(plot, dict)
        for definition in plot.values()
        for file in definition.get("y", {})
    }
    root_dir = yaml.safe_load((REPO / "config/config.yaml").read_text())["training"]["root_dir"]
    assert {f"{root_dir}/dvclive/plots/metrics/head/{split}/loss.tsv" for split in ("train", "val")} <= plotted


def test_input_reference_describes_the_training_split(trained_project):
    reference = load_json(trained_project.training().root_dir / "input_reference.json")
    assert reference["images"] == len(split_files(trained_project.training().data_dir, "train")[0])
    for name in ("width", "height", "mean", "std"):
        statistic = reference["statistics"][name]
        assert len(statistic["fractions"]) == len(statistic["edges"]) + 1
        assert np.isclose(sum(statistic["fractions"]), 1)
    assert np.isclose(sum(reference["class_mix"].values()), 1)


def test_fine_tuning_in_bfloat16_moves_only_the_unfrozen_block_and_saves_float32(project):
    # features in bfloat16 from the other engine where this CPU computes it (OpenVINO needs AVX-512)
    forced = [v for v in COMPUTABLE if v.precision == "mixed_bfloat16"][-1]
    manager = project(
        params={
            "features": {"precision": "mixed_bfloat16", "engine": forced.engine},
            "training": {
                "epochs": 3,
                "head": {"candidates": ["logistic"], "logistic_c": [1.0], "cv_folds": 2},
                "fine_tune": {"blocks": 1, "epochs": 1},
            },
        }
    )
    DataIngestion(manager.data_ingestion()).run()
    PrepareBaseModel(manager.prepare_base_model()).run()
    Features(manager.features()).run()
    Training(manager.training()).run()
    before = Training(manager.training()).base_of_features(2).get_layer("vgg16")
    after = load_classifier(manager.training().root_dir / "model.keras").get_layer("vgg16")
    assert not np.array_equal(
        before.get_layer("block5_conv3").get_weights()[0], after.get_layer("block5_conv3").get_weights()[0]
    )
    assert np.array_equal(
        before.get_layer("block4_conv3").get_weights()[0], after.get_layer("block4_conv3").get_weights()[0]
    )
    assert after.get_layer("block5_conv3").dtype_policy.name == "float32"
    info = load_json(manager.training().root_dir / "training_info.json")
    assert info["precision"] == "mixed_bfloat16" and info["fine_tune_epochs"] == 1
    # fine-tuning's Keras history, per split, through dvclive (`dvc plots show -x step .../fine_tune`)
    history = load_json(manager.training().root_dir / "history.json")["fine_tune"]
    curves = manager.training().root_dir / "dvclive/plots/metrics/fine_tune"
    for split, metric in [("train", "loss"), ("val", "loss"), ("train", "accuracy"), ("val", "accuracy")]:
        keras_name = metric if split == "train" else f"val_{metric}"
        assert read_curve(curves / split / f"{metric}.tsv") == ([1], pytest.approx(history[keras_name]))
    assert not (manager.training().root_dir / "dvclive/plots/metrics/head").exists()  # no MLP candidate here
    # the features (before and after fine-tuning) came from the forced engine; fine-tuning is TensorFlow's
    assert load_json(manager.features().root_dir / "features_info.json")["variant"] == str(forced)
