"""Tabular stage 2: build the chosen model behind its preprocessing and fit both on the training split.

Scaling (numbers) and one-hot encoding (declared categories) are fitted on the training split only
and saved with the estimator as one scikit-learn Pipeline in ``model.skops``, so evaluation and
serving apply exactly the transform training used.
"""

import time

import sklearn
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from cancer_classifier.core.io import atomic_directory, save_json
from cancer_classifier.core.logging import logger
from cancer_classifier.entity.tabular import ColumnSpec, TabularModelSpec, TabularTrainingConfig
from cancer_classifier.tabular.components.data import dataset_info, load_split
from cancer_classifier.tabular.model import KerasBinaryClassifier, TabularModel, intended_use


def preprocessor(columns: tuple[ColumnSpec, ...]) -> ColumnTransformer:
    numeric = [c.name for c in columns if c.numeric]
    categorical = [c for c in columns if not c.numeric]
    encoder = OneHotEncoder(categories=[list(c.categories) for c in categorical], sparse_output=False)
    return ColumnTransformer(
        [("scale", StandardScaler(), numeric), ("one_hot", encoder, [c.name for c in categorical])],
        sparse_threshold=0,
        verbose_feature_names_out=False,
    )


def estimator(spec: TabularModelSpec):
    options, seed = spec.options, spec.seed
    if spec.kind == "logistic_regression":
        return LogisticRegression(C=options["C"], max_iter=options["max_iter"], random_state=seed)
    if spec.kind == "random_forest":
        return RandomForestClassifier(
            n_estimators=options["n_estimators"], max_depth=options["max_depth"],
            min_samples_leaf=options["min_samples_leaf"], random_state=seed,
        )
    if spec.kind == "hist_gradient_boosting":
        return HistGradientBoostingClassifier(
            learning_rate=options["learning_rate"], max_iter=options["max_iter"],
            max_leaf_nodes=options["max_leaf_nodes"], l2_regularization=options["l2_regularization"], random_state=seed,
        )
    return KerasBinaryClassifier(
        hidden_units=tuple(options["hidden_units"]), epochs=options["epochs"], batch_size=options["batch_size"],
        learning_rate=options["learning_rate"], validation_fraction=options["validation_fraction"],
        patience=options["patience"], seed=seed,
    )


def selected_columns(info: dict, features: tuple[str, ...] | None) -> tuple[ColumnSpec, ...]:
    """The declared columns the model takes, in the order params.yaml lists them."""
    declared = {c["name"]: ColumnSpec.from_dict(c) for c in info["columns"]}
    return tuple(declared[name] for name in (features or declared))


def build_pipeline(columns: tuple[ColumnSpec, ...], spec: TabularModelSpec) -> Pipeline:
    return Pipeline([("preprocess", preprocessor(columns)), ("model", estimator(spec))])


class TabularTraining:
    def __init__(self, config: TabularTrainingConfig) -> None:
        self.config = config

    def run(self) -> TabularModel:
        config, spec = self.config, self.config.model
        info = dataset_info(config.data_dir)
        columns = selected_columns(info, spec.features)
        frame, labels = load_split(config.data_dir, "train")
        pipeline = build_pipeline(columns, spec)
        logger.info("%s: fitting %s on %d rows x %d columns", config.task.name, spec.kind, len(frame), len(columns))
        started = time.perf_counter()
        pipeline.fit(frame[[c.name for c in columns]], labels)
        seconds = round(time.perf_counter() - started, 2)
        metadata = {
            "task": config.task.name,
            "title": config.task.title,
            "kind": config.task.kind,
            "intended_use": intended_use(config.task.kind),
            "demo": False,
            "target": info["target"],
            "classes": info["classes"],
            "positive_class": info["positive_class"],
            "columns": [c.as_dict() for c in columns],
            "model": {"kind": spec.kind, "seed": spec.seed, **spec.options},
            "train_rows": len(frame),
            "fit_seconds": seconds,
            "scikit_learn": sklearn.__version__,
        }
        model = TabularModel(pipeline, metadata)
        with atomic_directory(config.root_dir) as out:
            model.save(out)
            save_json(out / "model_metadata.json", metadata)
        logger.info("%s: %s fitted in %.1f s", config.task.name, spec.kind, seconds)
        return model
