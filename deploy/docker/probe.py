#!/usr/bin/env python3
"""Health probe for containers: exit 0 if the URL answers 200, else 1 (with the reason on stderr).

    probe              http://127.0.0.1:$PORT/health  (alive: the image's HEALTHCHECK)
    probe /ready       http://127.0.0.1:$PORT/ready   (model loaded: compose, the EC2 deploy)
    probe http://127.0.0.1:5000/health                (any URL: the MLflow server in compose)

The image is built on python:slim, which has no curl or wget; the standard library does the request.
Proxies are ignored on purpose: a probe always means this container.
"""

import os
import sys
import urllib.request

TIMEOUT_SECONDS = float(os.environ.get("PROBE_TIMEOUT", "4"))


def url_for(target: str) -> str:
    if "://" in target:
        return target
    return f"http://127.0.0.1:{os.environ.get('PORT', '8080')}{target}"


def main(argv: list[str]) -> int:
    url = url_for(argv[1] if len(argv) > 1 else "/health")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT_SECONDS) as response:
            status = response.status
    except OSError as error:  # refused, timed out, or an HTTP error status (503 from /ready)
        print(f"probe {url}: {error}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"probe {url}: HTTP {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
