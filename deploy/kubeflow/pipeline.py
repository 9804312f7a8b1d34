"""The DVC pipeline as a Kubeflow Pipelines (kfp v2) pipeline, compiled to YAML by one command:

    python deploy/kubeflow/pipeline.py [--image IMAGE] [--output deploy/kubeflow/pipeline.yaml]

dvc.yaml stays the one description of the stages. Each stage becomes a lightweight Python
component that runs the stage's own command (``python -m cancer_classifier.chest_ct.pipeline.<stage>``) in
the project's image (Dockerfile target registry: the code, no model), and each stage output that a
later stage depends on becomes a Kubeflow artifact: Kubeflow stores it in the pipeline root (MinIO
on a standalone install) and hands it to the stages that need it, where it is put back at the path
the stage reads, as DVC does on one disk. Lightweight components, not container components, so
that ``kfp.local``'s SubprocessRunner runs the whole pipeline without Docker
(tests/test_kubeflow.py). The image carries ``kfp`` (Dockerfile), so the stages start without the
``pip install kfp`` a lightweight component runs by default, which would need PyPI and a venv
writable by the image's user. Settings come from the image's config/config.yaml and params.yaml.
MLflow runs and the registry go to the server given as ``mlflow_tracking_uri``
(deploy/k8s/10-mlflow.yaml): training and register must share it, because register continues the
run that training started.
"""

import argparse
import linecache
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from kfp import compiler, dsl
from kfp.dsl import Artifact, Input, Output

REPO = Path(__file__).resolve().parents[2]
PIPELINE_NAME = "chest-ct-classifier"
DEFAULT_IMAGE = os.environ.get("CANCER_CLASSIFIER_IMAGE", "cancer-classifier:local")
DEFAULT_TRACKING_URI = "http://mlflow.cancer-classifier.svc.cluster.local:5000"
DEFAULT_OUTPUT = Path(__file__).with_name("pipeline.yaml")
RESOURCES = {"cpu_request": "1", "memory_request": "2G", "memory_limit": "6G"}

# Each stage's component: its signature names the stage's artifacts, its body puts the input
# artifacts where the stage reads them (relative to the working folder: the image's /app), runs the
# stage with this interpreter, and copies what the stage wrote to the output artifacts. Generated
# per stage, because Kubeflow reads a component's inputs and outputs from its signature; the body
# is self-contained, because Kubeflow ships only the function's own source to the pod.
COMPONENT_SOURCE = """\
def {function}(mlflow_tracking_uri: str{parameters}):
    \"\"\"dvc.yaml stage {stage}: {shown}\"\"\"
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    artifacts = dict(locals())  # by name: Kubeflow's artifact objects and their paths
    moves = {moves!r}  # (in | out, artifact, the path in the project that dvc.yaml names)

    def copy(source, target):
        source, target = Path(source), Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target)

    for direction, name, path in moves:
        if direction == "in":
            copy(artifacts[name].path, path)
    command = [sys.executable if word == "python" else word for word in {command!r}]
    subprocess.run(command, env=dict(os.environ, MLFLOW_TRACKING_URI=mlflow_tracking_uri), check=True)
    for direction, name, path in moves:
        if direction == "out":
            copy(path, artifacts[name].path)
"""


@dataclass(frozen=True)
class Stage:
    name: str  # as DVC addresses it: "training", or "name@item" for a foreach stage
    command: tuple[str, ...]
    inputs: tuple[str, ...]  # outputs of other stages (paths as in dvc.yaml) that this stage reads
    outputs: tuple[str, ...]  # its outs and metrics


def read_stages(root: Path = REPO, targets: tuple[str, ...] = ("register",)) -> list[Stage]:
    """The stages ``dvc repro <targets>`` runs, each after the stages whose outputs it reads.

    DVC itself reads dvc.yaml (templating and foreach included), so the pipeline is the one DVC runs.
    """
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        found = {stage.addressing: stage for stage in repo.index.stages}
    producer = {out.def_path: name for name, stage in found.items() for out in stage.outs}

    def inputs_of(stage) -> list[str]:
        """Outputs of other stages this one depends on: a dependency inside an output needs all of it."""
        inputs = []
        for dep in stage.deps:
            for out in producer:
                if (dep.def_path == out or dep.def_path.startswith(out.rstrip("/") + "/")) and out not in inputs:
                    inputs.append(out)
        return inputs

    ordered: dict[str, Stage] = {}

    def visit(name: str, path: tuple[str, ...] = ()) -> None:
        if name in path:
            raise ValueError(f"dvc.yaml: stages depend on each other in a cycle: {' -> '.join(path + (name,))}")
        if name in ordered:
            return
        stage = found[name]
        inputs = inputs_of(stage)
        for out in inputs:
            visit(producer[out], path + (name,))
        ordered[name] = Stage(
            name, tuple(shlex.split(stage.cmd)), tuple(inputs), tuple(out.def_path for out in stage.outs)
        )

    for target in targets:
        if target not in found:
            raise ValueError(f"dvc.yaml has no stage {target!r}; stages: {sorted(found)}")
        visit(target)
    return list(ordered.values())


def artifact_name(path: str) -> str:
    """artifacts/data_ingestion -> data_ingestion, artifacts/tabular/x/training -> tabular_x_training,
    scores.json -> scores_json."""
    return re.sub(r"\W", "_", path.removeprefix("artifacts/"))


def component(stage: Stage, image: str):
    """The stage's lightweight component, from its generated source (kept in linecache, where
    ``inspect.getsource`` finds it, since Kubeflow reads the function's source to ship it)."""
    function = re.sub(r"\W", "_", stage.name)
    parameters = [f", {artifact_name(path)}: Input[Artifact]" for path in stage.inputs]
    parameters += [f", {artifact_name(path)}: Output[Artifact]" for path in stage.outputs]
    moves = [("in", artifact_name(path), path) for path in stage.inputs]
    moves += [("out", artifact_name(path), path) for path in stage.outputs]
    source = COMPONENT_SOURCE.format(
        function=function,
        parameters="".join(parameters),
        stage=stage.name,
        shown=shlex.join(stage.command),
        moves=moves,
        command=list(stage.command),
    )
    filename = f"<kubeflow component {stage.name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace = {"Input": Input, "Output": Output, "Artifact": Artifact}
    exec(compile(source, filename, "exec"), namespace)
    # The image has kfp (Dockerfile): no `pip install kfp` when the component starts.
    return dsl.component(base_image=image, install_kfp_package=False)(namespace[function])


def build_pipeline(image: str = DEFAULT_IMAGE, root: Path = REPO, targets: tuple[str, ...] = ("register",)):
    stages = read_stages(root, targets)
    names = [artifact_name(path) for stage in stages for path in stage.outputs]
    if len(set(names)) != len(names):
        raise ValueError(f"two outputs in dvc.yaml would share an artifact name: {sorted(names)}")
    components = {stage.name: component(stage, image) for stage in stages}

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Chest CT classifier: the stages of dvc.yaml, from data ingestion to the MLflow registry. "
        "Research only, not for clinical use.",
    )
    def pipeline(mlflow_tracking_uri: str = DEFAULT_TRACKING_URI):
        produced = {}  # dvc.yaml output path -> the task output that holds it
        for stage in stages:
            task = components[stage.name](
                mlflow_tracking_uri=mlflow_tracking_uri,
                **{artifact_name(path): produced[path] for path in stage.inputs},
            )
            task.set_display_name(stage.name)
            task.set_cpu_request(RESOURCES["cpu_request"])
            task.set_memory_request(RESOURCES["memory_request"])
            task.set_memory_limit(RESOURCES["memory_limit"])
            # Every stage reads from or writes to something outside Kubeflow (the data source, MLflow
            # runs, the registry), so a cached result could be stale or skip a registration. Re-runs
            # that only change later stages are what DVC is for (dvc repro).
            task.set_caching_options(False)
            for path in stage.outputs:
                produced[path] = task.outputs[artifact_name(path)]

    return pipeline


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default=DEFAULT_IMAGE, help=f"the project's image (default {DEFAULT_IMAGE})")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write the pipeline YAML")
    parser.add_argument(
        "--target",
        action="append",
        dest="targets",
        metavar="STAGE",
        help="run the stages `dvc repro STAGE` runs (repeatable; default register)",
    )
    parser.add_argument(
        "--project", type=Path, default=REPO, help="the project folder holding dvc.yaml (default: this one)"
    )
    args = parser.parse_args(argv)
    targets = tuple(args.targets or ("register",))
    compiler.Compiler().compile(build_pipeline(args.image, args.project, targets), str(args.output))
    print(f"wrote {args.output} (image {args.image})")
    return args.output


if __name__ == "__main__":
    main()
