"""Build-time guard of the Dockerfile's `pulled` target: is the model in artifacts/ the champion?

    python check_champion.py [--allow-non-champion true|false]     (run in the project folder)

The register stage writes artifacts/register/registration.json, which says whether the model it
registered took the champion alias ("promoted"). The model counts as the champion if it did and
artifacts/training/model.keras is the file it registered (its sha256; the check serving makes too).
Exit 0 if so, or if non-champions are allowed; else exit 1 with the reason.
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path

REGISTRATION = Path("artifacts/register/registration.json")
MODEL = Path("artifacts/training/model.keras")


def reason_not_champion(registration: Path = REGISTRATION, model: Path = MODEL) -> str | None:
    """None if the model is the registered champion, else why not."""
    for path in (registration, model):
        if not path.is_file():
            return f"{path} is missing: run the pipeline (dvc repro) first"
    record = json.loads(registration.read_text(encoding="utf-8"))
    if "model_sha256" in record:
        retrained = record["model_sha256"] != hashlib.sha256(model.read_bytes()).hexdigest()
    else:  # a record written before records carried the hash
        retrained = model.stat().st_mtime > registration.stat().st_mtime
    if retrained:
        return f"{model} was retrained after version {record.get('version')} was registered: run `dvc repro`"
    if not record.get("promoted"):
        return f"version {record.get('version')} is not the champion: {record.get('reason', 'not promoted')}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Is the model in artifacts/ the champion?")
    parser.add_argument("--allow-non-champion", choices=("true", "false"), default="false")
    args = parser.parse_args(argv)
    reason = reason_not_champion()
    if reason is None:
        print(f"baking the champion from {MODEL.parent}")
        return 0
    if args.allow_non_champion == "true":
        print(f"baking a model that is not the champion (ALLOW_NON_CHAMPION=true): {reason}")
        return 0
    print(f"not baking: {reason}. Bake the champion, or pass --build-arg ALLOW_NON_CHAMPION=true", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
