"""Small I/O helpers shared by every stage."""

import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from cancer_classifier.core.errors import ConfigError, StageInputError

YAML_BOOL = "tag:yaml.org,2002:bool"


class Yaml12Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true and false. `dvc exp run -S` rewrites params.yaml without quotes,
    and values such as No, Yes, On (the colorectal task's categories) must stay strings."""


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != YAML_BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12Loader.add_implicit_resolver(YAML_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


# A configuration file has a few hundred values; aliases may not expand it beyond this (a "billion
# laughs" file of a few lines would otherwise expand to gigabytes when walked).
MAX_YAML_NODES = 100_000


def expanded_nodes(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many nodes ``node`` stands for once every alias is expanded (shared nodes counted per use)."""
    if id(node) not in memo:
        memo[id(node)] = 1  # a recursive alias counts once
        if isinstance(node, yaml.SequenceNode):
            memo[id(node)] += sum(expanded_nodes(child, memo) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            memo[id(node)] += sum(expanded_nodes(k, memo) + expanded_nodes(v, memo) for k, v in node.value)
    return memo[id(node)]


def load_yaml(text: str, where: Path) -> Any:
    """YAML 1.2 booleans, and no alias expansion beyond MAX_YAML_NODES."""
    loader = Yaml12Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None and expanded_nodes(node, {}) > MAX_YAML_NODES:
            raise ConfigError(f"{where}: aliases expand to more than {MAX_YAML_NODES:,} values; refused")
        return loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()


def read_yaml(path: Path) -> dict:
    """Read a YAML mapping; an empty or non-mapping file is an error naming the file."""
    try:
        content = load_yaml(Path(path).read_text(), path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(content).__name__}")
    return content


def save_json(path: Path, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def load_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def load_output(path: Path, stage: str) -> Any:
    """Another stage's JSON output; missing, it is a stage input error naming the stage to run."""
    if not Path(path).is_file():
        raise StageInputError(f"{path} not found: run the {stage} stage first (dvc repro)")
    return load_json(path)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield an empty sibling folder that replaces ``target`` only if the block completes.

    A stage killed part-way leaves ``target`` as it was (or absent), never half-written.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for leftover in target.parent.glob(f".{target.name}.*.partial"):  # from runs killed part-way
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # Two renames, so a kill at any point leaves the old output or the new one, whole: deleting
    # the old folder in place could be cut short half-way.
    retired = staging.with_suffix(".old")
    if target.exists():
        target.rename(retired)
    staging.rename(target)
    shutil.rmtree(retired, ignore_errors=True)
