"""Soak test of the served API on loopback: real CT uploads mixed with bad inputs, for a fixed time.

    python -m benchmarks.soak --project /path/to/trained/project      # starts gunicorn itself
    python -m benchmarks.soak --url http://127.0.0.1:8080 --master-pid 1234   # a running gunicorn

Starts gunicorn (gunicorn.conf.py, WEB_CONCURRENCY workers, 127.0.0.1 only) in the project folder
unless --url is given, then sends concurrent uploads for --seconds (stopping earlier at
--max-requests): real chest CT slices from the shared data (CANCER_CLASSIFIER_SHARED, default
../shared; synthetic phantoms when absent), with every tenth request a bad input whose answer is
known (empty file 400, truncated PNG 400, text file 415, oversize upload 413, wrong content type
415). It samples each worker's resident memory from /proc and prints a memory time table and a
summary with PASS/FAIL per target; the exit code is 1 when a target fails. Targets: no 5xx, no
dropped connection for a well-formed request, every bad input answered with its 4xx, and no
worker growing by more than 10% in memory after the warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import os
import select
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from tests.support import REPO, SHARED, Gunicorn, children, multipart
from tqdm import tqdm

from benchmarks.load_test import default_image, loopback_only, send

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MEMORY_GROWTH_LIMIT = 0.10  # the target: no worker grows by more than 10% after warm-up


# -- what is sent -------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """One request body and the status it must get: 200 for an image, the known 4xx for a bad input.

    ``early_answer``: the server answers before reading the body (an upload over the limit), so the
    request is sent the way curl and browsers send it, reading the answer as soon as it comes.
    """

    name: str
    body: bytes
    content_type: str
    expected: int
    early_answer: bool = False

    @property
    def good(self) -> bool:
        return self.expected == 200


def ct_images(limit: int) -> list[tuple[str, bytes]]:
    """Up to ``limit`` real CT slices spread over the shared dataset's classes, else one phantom."""
    folder = SHARED / "data/chest-ct"
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not files:
        return [("phantom.png", default_image())]
    step = max(1, len(files) // limit)  # sorted by class folder: an even stride samples every class
    return [(path.name, path.read_bytes()) for path in files[::step][:limit]]


def good_uploads(limit: int) -> list[Upload]:
    return [Upload(name, *multipart((name, data)), 200) for name, data in ct_images(limit)]


def bad_uploads(max_upload_bytes: int) -> list[Upload]:
    """Malformed inputs with the status the API documents for each (serving/inputs.py, errors.py)."""
    image = default_image()  # a PNG, whatever the shared data holds
    truncated = image[: max(len(PNG_MAGIC) + 16, len(image) // 3)]
    return [
        Upload("bad: empty file", *multipart(("empty.png", b"")), 400),
        Upload("bad: truncated PNG", *multipart(("truncated.png", truncated)), 400),
        Upload("bad: text file", *multipart(("notes.png", b"not an image, just text\n" * 20)), 415),
        Upload("bad: oversize upload", *multipart(("huge.png", b"\0" * (max_upload_bytes + 1024))), 413, True),
        Upload("bad: wrong content type", image, "text/plain", 415),
    ]


def request_mix(good: list[Upload], bad: list[Upload], bad_every: int) -> Iterator[Upload]:
    """Endless, deterministic: every ``bad_every``-th request is the next bad input in turn."""
    goods, bads = itertools.cycle(good), itertools.cycle(bad)
    for number in itertools.count(1):
        yield next(bads) if bad and number % bad_every == 0 else next(goods)


# -- sampling memory ----------------------------------------------------------------------


def rss_kib(pid: int) -> int | None:
    """Resident memory of ``pid`` (VmRSS, KiB), or None once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


@dataclass
class MemorySampler:
    """Every ``interval`` seconds, the RSS of each of the master's live workers, in a thread."""

    master: int
    interval: float
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (seconds, pid, KiB)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        now = time.monotonic() - self._started
        for pid in children(self.master):
            kib = rss_kib(pid)
            if kib is not None:
                self.samples.append((now, pid, kib))

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()  # the end state, whatever the interval


def memory_growth(samples: list[tuple[float, int, int]], warmup: float) -> dict[int, tuple[int, int, float]]:
    """Per worker pid: (KiB after warm-up, KiB at the end, growth fraction).

    Each pid is judged from its own warm-up: a worker that replaced another only counts once it
    has served ``warmup`` seconds itself. Pids without two samples after that are left out.
    """
    first_seen: dict[int, float] = {}
    after: dict[int, list[int]] = {}
    for seconds, pid, kib in samples:
        first_seen.setdefault(pid, seconds)
        if seconds >= max(warmup, first_seen[pid] + warmup):
            after.setdefault(pid, []).append(kib)
    return {pid: (kibs[0], kibs[-1], kibs[-1] / kibs[0] - 1) for pid, kibs in after.items() if len(kibs) >= 2}


def memory_table(samples: list[tuple[float, int, int]]) -> str:
    """Markdown: one row per sampling time, one column of RSS (MB) per worker pid."""
    pids = sorted({pid for _, pid, _ in samples})
    rows: dict[float, dict[int, int]] = {}
    for seconds, pid, kib in samples:
        rows.setdefault(round(seconds), {})[pid] = kib
    lines = ["| t (s) | " + " | ".join(f"worker {pid} RSS (MB)" for pid in pids) + " |",
             "|---|" + "---|" * len(pids)]
    for seconds, by_pid in rows.items():
        cells = (f"{by_pid[pid] / 1024:.0f}" if pid in by_pid else "" for pid in pids)
        lines.append(f"| {seconds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- the load -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    upload: Upload
    status: int  # 0: no HTTP answer (refused, reset or timed out)
    seconds: float


def send_watching(url: str, body: bytes, content_type: str, timeout: float, chunk: int = 1 << 16) -> tuple[float, int]:
    """POST ``body`` in chunks, stopping as soon as the server answers; (seconds, status), 0 if none.

    load_test.send writes the whole body before reading, as urllib does: when the server refuses
    an oversize upload from its headers and closes, that client sees a reset instead of the 413.
    Here, as in curl, the answer is read even when the server stopped taking the body.
    """
    address = urlparse(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=timeout)
    started = time.perf_counter()
    try:
        connection.putrequest("POST", address.path)
        connection.putheader("Content-Type", content_type)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders()
        for start in range(0, len(body), chunk):
            if select.select([connection.sock], [], [], 0)[0]:
                break  # the answer (or a close) came before the whole body: stop sending
            try:
                connection.sock.sendall(body[start : start + chunk])
            except OSError:
                break  # the server stopped reading; its answer may still be waiting to be read
        response = connection.getresponse()
        response.read()
        return time.perf_counter() - started, response.status
    except OSError:
        return time.perf_counter() - started, 0
    finally:
        connection.close()


def drive(url: str, uploads: Iterator[Upload], seconds: float, max_requests: int, concurrency: int,
          timeout: float = 60) -> list[Result]:
    """Keep ``concurrency`` requests in flight until ``seconds`` have passed or ``max_requests`` were sent."""
    def one(upload: Upload) -> Result:
        sender = send_watching if upload.early_answer else send
        elapsed, status = sender(url, upload.body, upload.content_type, timeout)
        return Result(upload, status, elapsed)

    results: list[Result] = []
    deadline = time.monotonic() + seconds
    with ThreadPoolExecutor(concurrency) as pool, tqdm(total=max_requests, desc="soak", unit="req") as bar:
        pending = set()
        def more() -> bool:
            return len(results) + len(pending) < max_requests and time.monotonic() < deadline

        while pending or more():
            while more() and len(pending) < concurrency:
                pending.add(pool.submit(one, next(uploads)))
            done = next(as_completed(pending))
            pending.discard(done)
            results.append(done.result())
            bar.update()
    return results


def percentiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return (values[0],) * 3 if values else (float("nan"),) * 3
    q = statistics.quantiles(values, n=100, method="inclusive")
    return q[49], q[94], q[98]


@dataclass
class Summary:
    results: list[Result]
    elapsed: float
    growth: dict[int, tuple[int, int, float]] | None  # None: memory not sampled (no master pid)

    def count(self, keep: Callable[[Result], bool]) -> int:
        return sum(1 for result in self.results if keep(result))

    def wrong_answers(self) -> dict[str, list[int]]:
        """Bad inputs not answered with their documented 4xx: name -> statuses seen instead."""
        wrong: dict[str, list[int]] = {}
        for result in self.results:
            if not result.upload.good and result.status != result.upload.expected:
                wrong.setdefault(f"{result.upload.name} (expected {result.upload.expected})", []).append(result.status)
        return wrong

    def worst_growth(self) -> float | None:
        return max((growth for _, _, growth in self.growth.values()), default=None) if self.growth else None

    def targets(self) -> dict[str, bool | None]:
        """Each target: True (pass), False (fail) or None (not measured)."""
        worst = self.worst_growth()
        good = [r.status for r in self.results if r.upload.good]
        return {
            "no 5xx": self.count(lambda r: r.status >= 500) == 0,
            "no dropped connection for a well-formed request": 0 not in good,
            "every well-formed request answered 200": set(good) <= {200},
            "every bad input answered with its 4xx": not self.wrong_answers(),
            f"memory growth after warm-up <= {MEMORY_GROWTH_LIMIT:.0%}": (
                None if worst is None else worst <= MEMORY_GROWTH_LIMIT
            ),
        }

    def rows(self) -> list[tuple[str, str]]:
        good = [r for r in self.results if r.upload.good]
        ok = self.count(lambda r: r.upload.good and r.status == 200)
        p50, p95, p99 = percentiles(sorted(r.seconds * 1000 for r in good if r.status == 200))
        by_class = [self.count(lambda r, low=low: low <= r.status < low + 100) for low in (200, 400, 500)]
        rows = [
            ("duration", f"{self.elapsed:.0f} s"),
            ("requests (good / bad)", f"{len(self.results)} ({len(good)} / {len(self.results) - len(good)})"),
            ("2xx / 4xx / 5xx", " / ".join(map(str, by_class))),
            ("connection errors (no HTTP answer)", str(self.count(lambda r: r.status == 0))),
            ("throughput (good, req/s)", f"{ok / self.elapsed:.2f}"),
            ("latency of good requests p50 / p95 / p99", f"{p50:.0f} / {p95:.0f} / {p99:.0f} ms"),
        ]
        rows += [(f"bad input answered wrongly: {name}", str(seen)) for name, seen in self.wrong_answers().items()]
        rows += [
            (f"worker {pid} RSS after warm-up -> end", f"{start / 1024:.0f} -> {end / 1024:.0f} MB ({growth:+.1%})")
            for pid, (start, end, growth) in sorted((self.growth or {}).items())
        ]
        verdicts = {True: "PASS", False: "FAIL", None: "not measured"}
        return rows + [(f"target: {name}", verdicts[ok]) for name, ok in self.targets().items()]

    def table(self) -> str:
        lines = (f"| {name} | {value} |" for name, value in self.rows())
        return "\n".join(["| measure | value |", "|---|---|", *lines])


def soak(url: str, master: int | None, args: argparse.Namespace) -> Summary:
    good = good_uploads(args.images)
    bad = bad_uploads(int(args.max_upload_mb * 1024 * 1024)) if args.bad_every else []
    mix = f"one request in {args.bad_every}" if bad else "none"
    print(f"uploading {len(good)} distinct images ({good[0].name}, ...); bad inputs: {mix}")
    send(f"{url}/predict", good[0].body, good[0].content_type, 60)  # warm-up, not counted
    sampler = MemorySampler(master, args.sample_seconds) if master else None
    started = time.monotonic()
    with sampler or contextlib.nullcontext():
        results = drive(f"{url}/predict", request_mix(good, bad, args.bad_every), args.seconds,
                        args.max_requests, args.concurrency)
    elapsed = time.monotonic() - started
    if sampler is None:
        return Summary(results, elapsed, None)
    print("\nWorker memory over time:\n" + memory_table(sampler.samples))
    return Summary(results, elapsed, memory_growth(sampler.samples, args.warmup_seconds))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=REPO, help="trained project to serve (default: this repo)")
    parser.add_argument("--url", help="a running server on loopback instead of starting gunicorn")
    parser.add_argument("--master-pid", type=int, help="with --url: the gunicorn master, to sample its workers' memory")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "2")))
    parser.add_argument("--seconds", type=float, default=60, help="how long to keep sending")
    parser.add_argument("--max-requests", type=int, default=3000, help="stop earlier after this many")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--bad-every", type=int, default=10, help="every n-th request is a bad input (0: none)")
    parser.add_argument("--images", type=int, default=40, help="how many distinct CT slices to upload")
    parser.add_argument("--max-upload-mb", type=float, default=10, help="the server's limit (serving.max_upload_mb)")
    parser.add_argument("--sample-seconds", type=float, default=5, help="memory sampling interval")
    parser.add_argument("--warmup-seconds", type=float, default=10, help="memory growth is measured after this")
    parser.add_argument("--boot-seconds", type=float, default=300, help="how long the workers may take to load")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.url:
        summary = soak(loopback_only(args.url.rstrip("/")), args.master_pid, args)
    else:
        log = Path(tempfile.mkstemp(prefix="gunicorn-", suffix=".log")[1])
        with Gunicorn(args.project, args.workers, log=log) as server:
            server.wait_loaded(args.workers, args.boot_seconds)
            print(f"gunicorn {server.pid} on {server.url}, {args.workers} workers; log: {server.log}")
            summary = soak(server.url, server.pid, args)
            restarts = server.boots() - args.workers
        print(f"\nworkers restarted during the soak: {restarts}")
    print("\n" + summary.table())
    return 1 if False in summary.targets().values() else 0


if __name__ == "__main__":
    sys.exit(main())
