"""Bounded load test of the prediction API on loopback: latency percentiles, throughput, errors.

    gunicorn app:app -c gunicorn.conf.py &            # or any running instance on 127.0.0.1
    python -m benchmarks.load_test --requests 200 --concurrency 4

Sends a fixed number of multipart uploads of one image (default: a 512x512 synthetic CT phantom
PNG) and stops early at --max-seconds. Refuses any target that is not loopback.
"""

import argparse
import io
import ipaddress
import socket
import statistics
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from PIL import Image
from tests.support import multipart, post
from tqdm import tqdm

from cancer_classifier.chest_ct.components.synthetic import phantom


def loopback_only(url: str) -> str:
    host = urlparse(url).hostname or ""
    if not ipaddress.ip_address(socket.gethostbyname(host)).is_loopback:
        raise SystemExit(f"{url}: load tests may only target loopback (127.0.0.0/8, ::1)")
    return url


def default_image() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(phantom(512, 0, np.random.default_rng(0)), mode="L").resize((512, 512)).save(buffer, "PNG")
    return buffer.getvalue()


def send(url: str, body: bytes, content_type: str, timeout: float) -> tuple[float, int]:
    """(seconds, status) of one POST; status 0 when there was no answer."""
    reply = post(url, body, content_type, timeout)
    return reply.seconds, reply.status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-seconds", type=float, default=120)
    parser.add_argument("--image", type=Path, help="image to upload (default: a 512x512 phantom PNG)")
    args = parser.parse_args()
    url = loopback_only(args.url.rstrip("/")) + "/predict"
    image = args.image.read_bytes() if args.image else default_image()
    body, content_type = multipart((args.image.name if args.image else "phantom.png", image))
    send(url, body, content_type, 60)  # warm-up, not counted

    results: list[tuple[float, int]] = []
    deadline = time.monotonic() + args.max_seconds
    started = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        pending = set()
        submitted = 0
        with tqdm(total=args.requests, desc="requests", unit="req") as bar:
            while submitted < args.requests or pending:
                while submitted < args.requests and len(pending) < args.concurrency and time.monotonic() < deadline:
                    pending.add(pool.submit(send, url, body, content_type, 60))
                    submitted += 1
                if not pending:
                    break
                done = next(as_completed(pending))
                pending.discard(done)
                results.append(done.result())
                bar.update()
    elapsed = time.perf_counter() - started

    latencies = sorted(seconds * 1000 for seconds, status in results if status == 200)
    errors = sum(status != 200 for _, status in results)
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else [float("nan")] * 99
    print("\n| target | requests | concurrency | ok | errors | throughput (req/s) | p50 ms | p95 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {url} | {len(results)} | {args.concurrency} | {len(latencies)} | {errors} | {len(latencies) / elapsed:.2f} "
        f"| {q[49]:.0f} | {q[94]:.0f} | {q[98]:.0f} |"
    )


if __name__ == "__main__":
    main()
