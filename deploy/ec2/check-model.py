#!/usr/bin/env python3
"""After a deploy: does the app at URL serve the model this commit pins?

    check-model.py URL --version VERSION --sha256 SHA256   (CI: after deploy/ec2/deploy.sh)

The pinned model is the one deploy/dvc/pull-model.sh brought: VERSION from its registration record
(artifacts/register/registration.json), SHA256 that of artifacts/training/model.keras. Exit 0 if
URL/ready answers 200 with that version and URL/model-card describes that very file; else 1,
saying what differs. Standard library only: the EC2 host runs it with its own python3.
"""

import argparse
import json
import sys
import urllib.request


def get_json(url: str) -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # always this host
    with opener.open(url, timeout=30) as response:  # an error status raises: reported by main()
        return json.load(response)


def differences(url: str, version: str, sha256: str) -> list[str]:
    """What the app at ``url`` serves that is not the pinned model (nothing: the right one)."""
    served = get_json(f"{url}/ready")["model"]
    found = []
    if served.get("source") != "local" or served.get("version") != version:
        found.append(f"/ready reports {served.get('source')} version {served.get('version')}, expected local {version}")
    card = get_json(f"{url}/model-card").get("model_sha256")
    if card != sha256:
        found.append(f"/model-card describes model sha256 {card}, expected {sha256}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the app, e.g. http://127.0.0.1:8080")
    parser.add_argument("--version", required=True, help="the registered version dvc.lock pins")
    parser.add_argument("--sha256", required=True, help="sha256 of the model file dvc.lock pins")
    args = parser.parse_args(argv)
    try:
        found = differences(args.url.rstrip("/"), args.version, args.sha256)
    except (OSError, ValueError, KeyError) as error:
        print(f"{args.url} did not answer /ready and /model-card: {error}", file=sys.stderr)
        return 1
    for difference in found:
        print(f"{args.url} does not serve the pinned model: {difference}", file=sys.stderr)
    if not found:
        print(f"{args.url} serves the pinned model: version {args.version}, sha256 {args.sha256[:12]}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
