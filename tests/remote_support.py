"""Helpers of the DVC remote round trip (tests/test_dvc_pipeline.py): git in a repo copy, file
digests, and what gunicorn answers for a project folder."""

import hashlib
import subprocess
import sys
from pathlib import Path

from tests.support import REPO, Gunicorn, predict

# What deploy/dvc/pull-model.sh must bring (the app's files), and must not (the data, the features).
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


def answers(project: Path, images: dict[str, bytes], check: dict | None = None) -> tuple[dict, list[dict]]:
    """/ready and the /predict reply for each image, from gunicorn serving ``project``; with
    ``check`` (version, sha256), deploy/ec2/check-model.py must also find that model served."""
    with Gunicorn(project) as server:
        ready = server.wait_ready(300)
        if check:
            script = [sys.executable, str(REPO / "deploy/ec2/check-model.py"), server.url]
            options = ["--version", check["version"], "--sha256", check["sha256"]]
            result = subprocess.run(script + options, capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            wrong = subprocess.run(script + options[:3] + ["0" * 64], capture_output=True, text=True, timeout=60)
            assert wrong.returncode == 1 and "expected 000000000000" in wrong.stderr, wrong.stderr
        return ready, [predict(server.url, (name, data)) for name, data in images.items()]
