"""Choosing the head: each candidate is cross-validated on train + val (folds never split a
near-duplicate group), the best by out-of-fold ROC-AUC is refitted on train + val, and the test
split stays untouched for the final figures.

Candidates: ``logistic`` (regularised multinomial logistic regression on standardised features,
one per strength C; fitted by scikit-learn and written into the Keras head, so it serves like any
head) and ``mlp`` (today's small network, early-stopped inside each fold; the refit trains for the
median of the folds' best epoch counts). The MLP's per-epoch losses in the folds, averaged, are the
report's ``curve`` (the training stage logs it through dvclive: a DVC plot).
"""

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedGroupKFold

from cancer_classifier.chest_ct.modeling import build_head
from cancer_classifier.core.errors import StageInputError
from cancer_classifier.core.logging import logger
from cancer_classifier.core.metrics import headline_metrics
from cancer_classifier.entity import TrainingConfig


@dataclass(frozen=True)
class Candidate:
    kind: str  # logistic | mlp
    c: float | None = None  # logistic regression's inverse regularisation strength

    @property
    def name(self) -> str:
        return f"logistic C={self.c:g}" if self.kind == "logistic" else "mlp"


def candidates(config: TrainingConfig) -> list[Candidate]:
    return [
        candidate
        for kind in config.head_candidates
        for candidate in ([Candidate(kind, c) for c in config.logistic_c] if kind == "logistic" else [Candidate(kind)])
    ]


def class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    """Balanced weights: each class contributes equally to the loss."""
    counts = np.bincount(labels, minlength=n_classes)
    return {c: float(len(labels) / (n_classes * counts[c])) for c in range(n_classes) if counts[c]}


def standardisation(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and variance of the training features.

    A feature that is (nearly) constant in training, such as a ReLU unit that never fired, keeps a
    typical scale instead of being divided by ~0, which would turn any unseen value into a huge logit.
    """
    mean, variance = features.mean(axis=0), features.var(axis=0)
    typical = float(np.median(variance[variance > 0])) if (variance > 0).any() else 1.0
    return mean, np.where(variance < 1e-2 * typical, typical, variance)


def set_standardisation(head: keras.Model, mean: np.ndarray, variance: np.ndarray) -> None:
    layer = head.get_layer("feature_norm")
    layer.set_weights([mean, variance, np.array(len(mean), dtype=layer.weights[2].dtype)])
    layer.finalize_state()  # the layer computes with tensors derived from these weights


class HeadTrainer:
    """Fits one candidate head on features; the settings come from the training stage's config."""

    def __init__(self, config: TrainingConfig, n_classes: int, dense_units: int, dropout: float) -> None:
        self.config, self.n_classes = config, n_classes
        self.dense_units, self.dropout = dense_units, dropout

    def fit(
        self,
        candidate: Candidate,
        x: np.ndarray,
        y: np.ndarray,
        validation: tuple | None = None,
        epochs: int = 0,
        curve: list | None = None,
    ) -> tuple[keras.Model, int]:
        """The fitted head and, for the MLP, its epoch count (the best one when early-stopped on ``validation``).

        With ``validation`` and a ``curve`` list, the MLP appends ``(train_loss, val_loss)`` per epoch to it."""
        head = build_head(candidate.kind, self.n_classes, self.dense_units, self.dropout)
        mean, variance = standardisation(x)
        set_standardisation(head, mean, variance)
        if candidate.kind == "logistic":
            self._fit_logistic(head, candidate.c, (x - mean) / np.sqrt(variance), y)
            return head, 0
        return head, self._fit_mlp(head, x, y, validation, epochs, curve)

    def _fit_logistic(self, head: keras.Model, c: float, standardised: np.ndarray, y: np.ndarray) -> None:
        fitted = LogisticRegression(
            C=c, max_iter=5000, class_weight="balanced" if self.config.class_weights else None
        ).fit(standardised, y)
        kernel, bias = fitted.coef_.T, fitted.intercept_
        if self.n_classes == 2:  # one logit z for class 1: softmax([0, z]) is its sigmoid
            kernel, bias = np.hstack([np.zeros_like(kernel), kernel]), np.array([0.0, bias[0]])
        head.get_layer("probabilities").set_weights([kernel.astype("float32"), bias.astype("float32")])

    def _fit_mlp(
        self, head: keras.Model, x: np.ndarray, y: np.ndarray, validation: tuple | None, epochs: int, curve: list | None
    ) -> int:
        """Mini-batch Adam with class weights; with ``validation``, early stopping that keeps the best epoch.

        Each epoch is one compiled call (``epoch_step``): on a few hundred rows, a Python call per batch
        (``train_on_batch``) or ``fit``'s per-epoch machinery cost several times the arithmetic."""
        config = self.config
        weights = class_weights(y, self.n_classes) if config.class_weights else {}
        row_weights = tf.constant([weights.get(int(label), 1.0) for label in y], tf.float32)
        step = epoch_step(head, keras.optimizers.Adam(config.learning_rate), config.batch_size)
        x, y = tf.constant(x, tf.float32), tf.constant(y, tf.int64)
        x_stop, y_stop = (tf.constant(a) for a in validation) if validation else (x[:0], y[:0])
        rng = np.random.default_rng(config.seed)
        best_loss, best_weights, best_epoch = np.inf, None, 0
        for epoch in range(1, (config.epochs if validation else max(1, epochs)) + 1):
            fit_loss, stop_loss = step(x, y, row_weights, tf.constant(rng.permutation(len(y))), x_stop, y_stop)
            if validation is None:
                continue
            loss = float(stop_loss)
            if curve is not None:
                curve.append((float(fit_loss), loss))
            if loss < best_loss:
                best_loss, best_weights, best_epoch = loss, head.get_weights(), epoch
            elif epoch - best_epoch >= config.early_stopping_patience:
                break
        if best_weights is None:  # no validation (the refit), or no finite loss: the last epoch's weights
            return epoch
        head.set_weights(best_weights)
        return best_epoch


def epoch_step(head: keras.Model, optimizer: keras.optimizers.Optimizer, batch_size: int):
    """One epoch of mini-batch steps in the given row order, compiled, returning the epoch's training
    loss and the mean cross-entropy on the early-stopping rows after it. Each batch's loss is the
    class-weighted mean cross-entropy, as Keras computes it with ``class_weight``; the training loss is
    their mean weighted by batch size, as Keras reports ``loss`` for an epoch of ``fit``."""
    loss = keras.losses.SparseCategoricalCrossentropy()
    variables = head.trainable_variables
    optimizer.build(variables)

    @tf.function
    def step(x, y, row_weights, order, x_stop, y_stop) -> tuple[tf.Tensor, tf.Tensor]:
        total = tf.constant(0.0)
        for start in tf.range(0, tf.size(order), batch_size):
            rows = order[start : start + batch_size]
            with tf.GradientTape() as tape:
                batch_loss = loss(tf.gather(y, rows), head(tf.gather(x, rows), training=True),
                                  sample_weight=tf.gather(row_weights, rows))
            optimizer.apply(tape.gradient(batch_loss, variables), variables)
            total += batch_loss * tf.cast(tf.size(rows), tf.float32)
        return total / tf.cast(tf.size(order), tf.float32), loss(y_stop, head(x_stop, training=False))

    return step


def inner_split(y: np.ndarray, groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """About a sixth of a fold's training rows, whole groups, for the MLP's early stopping."""
    splits = max(2, min(6, *(len(set(groups[y == label])) for label in set(y))))
    fit, stop = next(StratifiedGroupKFold(splits, shuffle=True, random_state=seed).split(y, y, groups))
    return fit, stop


def mean_curve(folds: list[list[tuple[float, float]]]) -> dict:
    """Per epoch, the mean over the folds that reached it of their ``(train_loss, val_loss)``: early
    stopping ends each fold at its own epoch, so later epochs average fewer folds (``folds``)."""
    longest = max(map(len, folds), default=0)
    by_epoch = [[fold[epoch] for fold in folds if len(fold) > epoch] for epoch in range(longest)]
    return {
        "epoch": list(range(1, longest + 1)),
        "train_loss": [float(np.mean([train for train, _ in losses])) for losses in by_epoch],
        "val_loss": [float(np.mean([val for _, val in losses])) for losses in by_epoch],
        "folds": [len(losses) for losses in by_epoch],
    }


def select_head(
    trainer: HeadTrainer, x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int, seed: int
) -> tuple[keras.Model, dict]:
    """Cross-validate every candidate, refit the best on all rows; the head and a report of the choice.

    The report's ``curve`` is the MLP candidate's losses per epoch in the folds (``mean_curve``): train on
    a fold's fitting rows, val on its early-stopping rows (whole image groups kept out of the fit); None
    without an MLP candidate."""
    for label in range(trainer.n_classes):
        distinct = len(set(groups[y == label]))
        if distinct < folds + 1:  # each fold holds out whole groups; the MLP's inner split needs one more
            raise StageInputError(
                f"class {label} has {distinct} distinct image group(s) in train + val, too few for "
                f"{folds}-fold cross-validation: lower params.yaml training.head.cv_folds or add images"
            )
    splits = list(StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(x, y, groups))
    results, epochs, curve = {}, {}, None
    for candidate in candidates(trainer.config):
        out_of_fold, best_epochs, fold_curves = np.zeros((len(y), trainer.n_classes)), [], []
        for fit_rows, held_rows in splits:
            validation, fold_curve = None, None
            if candidate.kind == "mlp":
                inner_fit, inner_stop = inner_split(y[fit_rows], groups[fit_rows], seed)
                validation = (x[fit_rows][inner_stop], y[fit_rows][inner_stop])
                fit_rows = fit_rows[inner_fit]
                fold_curve = []
                fold_curves.append(fold_curve)
            head, epoch = trainer.fit(candidate, x[fit_rows], y[fit_rows], validation, curve=fold_curve)
            out_of_fold[held_rows] = keras.ops.convert_to_numpy(head(x[held_rows], training=False))
            best_epochs.append(epoch)
        if candidate.kind == "mlp":
            curve = mean_curve(fold_curves)
        results[candidate.name] = {
            "cv_roc_auc": headline_metrics(y, out_of_fold, positive=1)["roc_auc"],  # as the evaluation's
            "cv_log_loss": float(log_loss(y, out_of_fold / out_of_fold.sum(axis=1, keepdims=True),
                                          labels=range(trainer.n_classes))),
        }
        epochs[candidate.name] = int(np.median(best_epochs)) if candidate.kind == "mlp" else 0
        logger.info("head %-16s cross-validated ROC-AUC %.4f", candidate.name, results[candidate.name]["cv_roc_auc"])
    # Highest ROC-AUC; ties go to the earlier (simpler) candidate.
    chosen = max(candidates(trainer.config), key=lambda c: results[c.name]["cv_roc_auc"])
    head, _ = trainer.fit(chosen, x, y, epochs=epochs[chosen.name])
    runner_up = sorted((r["cv_roc_auc"], n) for n, r in results.items() if n != chosen.name)
    reason = f"highest {folds}-fold cross-validated ROC-AUC on train + val ({results[chosen.name]['cv_roc_auc']:.4f}"
    reason += f"; next {runner_up[-1][1]} {runner_up[-1][0]:.4f})" if runner_up else ")"
    report = {
        "chosen": chosen.name,
        "kind": chosen.kind,
        "reason": reason,
        "folds": folds,
        "rows": int(len(y)),
        "refit": "train + val",
        "epochs": epochs[chosen.name] or None,
        "candidates": results,
        "curve": curve,
    }
    logger.info("head: %s, %s", chosen.name, reason)
    return head, report
