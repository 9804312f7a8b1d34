"""The DVC remote as the model's home, for real: a copy of this repo trained by `dvc repro` pushes to
a local remote (a folder), a fresh clone of its commit pulls only what the app serves
(deploy/dvc/pull-model.sh) and gunicorn serves it, with the same answers as the trained copy."""

import hashlib
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_PARAMS, merge
from tests.parity import Gunicorn, evaluated, get_json, post_file
from tests.test_dvc_pipeline import repo_copy, run  # noqa: F401 (repo_copy is a fixture)

pytestmark = pytest.mark.slow

SERVED = ("artifacts/training", "artifacts/evaluation", "artifacts/register") + tuple(
    f"artifacts/tabular/breast-cancer/{stage}" for stage in ("training", "register")
)
NOT_SERVED = ("data_ingestion", "prepare_base_model", "features", "tabular/breast-cancer/ingestion")


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True)


def digests(root: Path, folders: tuple[str, ...]) -> dict[str, str]:
    """sha256 of every file under ``folders``, by path relative to ``root``."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in folders
        for path in sorted((root / folder).rglob("*"))
        if path.is_file()
    }


def answers(project: Path, images: dict[str, bytes]) -> tuple[dict, list[dict]]:
    """/ready and the /predict reply for each image, from gunicorn serving ``project``."""
    server = Gunicorn(project, workers=1, log=project / "gunicorn.log").start(seconds=180)
    try:
        status, ready = get_json(f"{server.url}/ready", timeout=120)
        assert status == 200, ready
        return ready, [post_file(f"{server.url}/predict", data, name) for name, data in images.items()]
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pushed(repo_copy, tmp_path_factory) -> tuple[Path, Path]:  # noqa: F811 (the fixture imported above)
    """The repo copy on tiny settings, trained by `dvc repro`, pushed to a local remote, lock committed."""
    params = repo_copy / "params.yaml"
    params.write_text(yaml.safe_dump(merge(yaml.safe_load(params.read_text()), TINY_PARAMS)))
    remote = tmp_path_factory.mktemp("remote")
    run(["dvc", "remote", "add", "--default", "storage", str(remote)], repo_copy)
    run(["dvc", "repro"], repo_copy)
    run(["dvc", "push"], repo_copy)
    git(repo_copy, "add", "-A")
    git(repo_copy, "commit", "-qm", "dvc repro, dvc push")
    return repo_copy, remote


def test_a_fresh_clone_pulls_only_the_served_model_and_serves_the_same_answers(pushed, tmp_path):
    trained, _ = pushed
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(trained), str(clone))
    run(["bash", "deploy/dvc/pull-model.sh"], clone)

    assert not [folder for folder in NOT_SERVED if (clone / "artifacts" / folder).exists()], "pulled the data too"
    assert digests(clone, SERVED) == digests(trained, SERVED)  # byte for byte what dvc.lock pins

    test_files = sorted(next(iter(evaluated(trained / "artifacts/evaluation", "test").values())))
    images = {name: (trained / "artifacts/data_ingestion/images" / name).read_bytes() for name in test_files}
    ready, served = answers(clone, images)
    registration = yaml.safe_load((clone / "artifacts/register/registration.json").read_text())
    assert ready["model"]["source"] == "local" and ready["model"]["version"] == str(registration["version"])
    assert ready["tasks"]["breast-cancer"]["loaded"]
    assert served == answers(trained, images)[1]
