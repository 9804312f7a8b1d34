"""Model versions on any MLflow server: what the register stages of every task use.

The model is saved locally first, then uploaded the way the server allows: as an MLflow 3 logged
model where the server has that API, else as artifacts of the registration run (MLflow 2.x, as on
DagsHub). Where the server has a model registry the upload becomes a model version and the alias
moves; where it has none, the champion is the newest run tagged ``model_alias.<alias> = <name>``
(see ``ModelStore.champion``), which the app reads the same way.

Nothing is left half-done: a failure removes the version, the logged model and the registration
run it had created, and the training run is never touched.
"""

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cancer_classifier.core.errors import TrackingError
from cancer_classifier.core.logging import logger
from cancer_classifier.core.settings import TRACKING_URI_ENV
from cancer_classifier.core.tracking import Server, connect, public_uri, tracking_errors
from cancer_classifier.entity import TrackingConfig

# The package itself: every registered model carries it as its code (MLflow's code_paths).
MODEL_ARTIFACT = "model"  # the model's folder in the registration run (servers without logged models)
MODEL_URI_TAG = "model_uri"  # on the registration run: where its model is, whatever the server
REGISTERED_FILES = Path("artifacts") / "serving"  # in a registered chest-CT model: the files the app reads
SETTINGS_FILE = "serving_settings.json"  # there too: the app's limits, for MLflow's scoring server
# What `mlflow models serve` installs for a registered model, pinned to this environment's versions.
RUNTIME_PACKAGES = (
    "mlflow",
    "keras",
    "numpy",
    "pandas",
    "pillow",
    "scikit-learn",
    "skops",
    "matplotlib",
    "pydicom",
    "pylibjpeg",
    "pylibjpeg-libjpeg",
    "ImageHash",
    "PyYAML",
    "tqdm",
    "Flask",
    "prometheus_client",
)


def pinned_requirements() -> list[str]:
    """This environment's versions of what serving imports: one TensorFlow (the one installed), no project."""
    try:
        tensorflow = f"tensorflow-cpu=={version('tensorflow-cpu')}"
    except PackageNotFoundError:  # the full TensorFlow (macOS, GPU machines)
        tensorflow = f"tensorflow=={version('tensorflow')}"
    return [tensorflow, *(f"{name}=={version(name)}" for name in RUNTIME_PACKAGES)]


def alias_tag(alias: str) -> str:
    """The run tag that marks the champion where the server has no model registry."""
    return f"model_alias.{alias}"


@dataclass(frozen=True)
class Version:
    """A registered model: a registry version, or a registration run where there is no registry."""

    version: str  # the registry's version number, or the run id
    run_id: str
    model_uri: str  # what mlflow.artifacts.download_artifacts takes to fetch the model folder
    tags: dict[str, str]
    model_id: str | None = None  # the MLflow 3 logged model, if one was created


class ModelStore:
    """One registered model name and its alias on one server."""

    def __init__(self, server: Server, name: str, alias: str) -> None:
        self.server, self.name, self.alias = server, name, alias
        self.client = MlflowClient()

    def champion(self) -> Version | None:
        """The version the alias points to; None only when there is none yet (other failures raise)."""
        with tracking_errors(self.server.uri, f"reading the {self.alias} of {self.name}"):
            return self._registry_champion() if self.server.registry else self._tagged_champion()

    def _registry_champion(self) -> Version | None:
        try:
            model = self.client.get_registered_model(self.name)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        if self.alias not in (model.aliases or {}):
            return None
        found = self.client.get_model_version(self.name, model.aliases[self.alias])
        return Version(str(found.version), found.run_id, f"models:/{self.name}/{found.version}", dict(found.tags))

    def _tagged_champion(self) -> Version | None:
        runs = self.client.search_runs(
            [self.server.experiment_id],
            filter_string=f"tags.`{alias_tag(self.alias)}` = '{self.name}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not runs or MODEL_URI_TAG not in runs[0].data.tags:  # none, or a run tagged by hand
            return None
        run = runs[0]
        return Version(run.info.run_id, run.info.run_id, run.data.tags[MODEL_URI_TAG], dict(run.data.tags))

    def publish(self, run_id: str, model_dir: Path, tags: dict[str, str]) -> Version:
        """Upload the saved model folder and make it a version carrying ``tags`` from its creation."""
        model_id = None
        try:
            with tracking_errors(self.server.uri, f"uploading the model {self.name}"):
                if self.server.logged_models:
                    logged = self.client.create_logged_model(
                        self.server.experiment_id, name=MODEL_ARTIFACT, source_run_id=run_id, tags=tags
                    )
                    model_id = logged.model_id
                    self.client.log_model_artifacts(model_id, str(model_dir))
                    self.client.finalize_logged_model(model_id, "READY")
                    source, model_uri = logged.artifact_location, f"models:/{model_id}"
                else:
                    self.client.log_artifacts(run_id, str(model_dir), MODEL_ARTIFACT)
                    source = f"{self.client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT}"
                    model_uri = f"runs:/{run_id}/{MODEL_ARTIFACT}"
                self.client.set_tag(run_id, MODEL_URI_TAG, model_uri)
            if not self.server.registry:
                return Version(run_id, run_id, model_uri, tags, model_id)
            with tracking_errors(self.server.uri, f"registering {self.name}"):
                self._ensure_registered_model()
                created = self.client.create_model_version(self.name, source, run_id, tags=tags, model_id=model_id)
        except BaseException:  # interrupted too
            self._forget(model_id)
            raise
        version = str(created.version)
        return Version(version, run_id, f"models:/{self.name}/{version}", tags, model_id)

    def _ensure_registered_model(self) -> None:
        try:
            self.client.create_registered_model(self.name)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    def promote(self, version: Version, previous: Version | None) -> None:
        """Point the alias at ``version`` (and, without a registry, take the tag off the previous one)."""
        with tracking_errors(self.server.uri, f"moving {self.alias} of {self.name}"):
            if self.server.registry:
                self.client.set_registered_model_alias(self.name, self.alias, version.version)
                return
            self.client.set_tag(version.run_id, alias_tag(self.alias), self.name)
            if previous is not None and previous.run_id != version.run_id:
                self.client.delete_tag(previous.run_id, alias_tag(self.alias))

    def discard(self, version: Version | None) -> None:
        """Undo a registration that failed part-way."""
        if version is None:
            return
        if self.server.registry:
            self.quietly(
                f"version {version.version}", lambda: self.client.delete_model_version(self.name, version.version)
            )
        self._forget(version.model_id)

    def _forget(self, model_id: str | None) -> None:
        if model_id:
            self.quietly(f"logged model {model_id}", lambda: self.client.delete_logged_model(model_id))

    def quietly(self, what: str, undo: Callable[[], object]) -> None:
        """Best effort: the failure that made this necessary is the one reported."""
        try:
            undo()
        except Exception as error:  # noqa: BLE001
            logger.warning("could not remove the %s of %s after a failure: %s", what, self.name, error)


@dataclass(frozen=True)
class Downloaded:
    path: Path  # the registered model's folder
    version: str
    root: Path  # the temporary folder holding it

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def download_champion(tracking: TrackingConfig, doing: str) -> Downloaded:
    """The champion's model folder, downloaded into a temporary folder that the caller keeps for the
    life of the process, or discards if it cannot use it.

    Raises TrackingError (one line) when the server fails or there is no champion yet."""
    server = connect(tracking, doing)
    champion = ModelStore(server, tracking.registered_model, tracking.alias).champion()
    if champion is None:
        raise TrackingError(
            f"{doing}: {tracking.registered_model} has no '{tracking.alias}' on MLflow at "
            f"{public_uri(tracking.tracking_uri)}: register one with `dvc repro` run with {TRACKING_URI_ENV} set to it"
        )
    root = Path(tempfile.mkdtemp(prefix="registered-model-"))
    try:
        with tracking_errors(tracking.tracking_uri, f"{doing}: downloading {champion.model_uri}"):
            path = mlflow.artifacts.download_artifacts(artifact_uri=champion.model_uri, dst_path=str(root))
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return Downloaded(Path(path), champion.version, root)


def start_run(client: MlflowClient, server: Server, name: str, training: dict | None) -> str:
    """A registration run: a child of the training run where that run is on this server, else a run
    of its own that names where training was tracked (the training run itself is never changed)."""
    tags = {"mlflow.runName": name}
    if training is None:  # training was not tracked
        return client.create_run(server.experiment_id, run_name=name, tags=tags).info.run_id
    try:
        client.get_run(training["mlflow_run_id"])
        tags["mlflow.parentRunId"] = training["mlflow_run_id"]
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        where = training.get("mlflow_tracking_uri", "another tracking store")
        tags["training_run"] = f"{training['mlflow_run_id']} on {where}"
        logger.info("the training run is not on %s: this registration run stands alone", public_uri(server.uri))
    return client.create_run(server.experiment_id, run_name=name, tags=tags).info.run_id


def register(
    store: ModelStore,
    decision: dict,
    champion: Version | None,
    run_name: str,
    training: dict | None,
    log: Callable[[], None],
    save_model: Callable[[Path], None],
    tags: dict[str, str],
) -> Version:
    """Log the evaluation (``log``, inside the registration run), upload the model ``save_model``
    writes, make it a version tagged with ``tags`` and the gate's reason, and move the alias if the
    decision says so. All or nothing: on any failure what was created is removed again."""
    server, client = store.server, store.client
    with tracking_errors(server.uri, "starting the registration run"):
        run_id = start_run(client, server, run_name, training)
    version = None
    try:
        with tracking_errors(server.uri, "logging the evaluation"), mlflow.start_run(run_id=run_id):
            log()
            mlflow.set_tags({"promotion": decision["reason"], "promotion_comparison": decision["comparison"]})
        with tempfile.TemporaryDirectory(prefix="model-") as folder:
            save_model(Path(folder) / MODEL_ARTIFACT)
            version = store.publish(run_id, Path(folder) / MODEL_ARTIFACT, tags | {"promotion": decision["reason"]})
        if decision["promote"]:
            store.promote(version, champion)
    except BaseException:  # interrupted too: nothing half-registered stays behind
        store.discard(version)
        store.quietly("registration run", lambda: client.delete_run(run_id))
        raise
    return version
