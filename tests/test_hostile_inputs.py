"""Hostile input against a real gunicorn on loopback (issue 16): every upload within a decode
budget, no 500 for a client's mistake, slow clients cannot starve the worker, bounded metrics.

The corpus is generated here (no binary blobs in the repository) and sent to one gunicorn with one
worker (gunicorn.conf.py as in production), started once for the module and stopped in its
fixture's ``finally``. For each input the worker's peak memory growth is measured from
/proc/<worker>/status: VmHWM is reset through /proc/<worker>/clear_refs before the request and
read after it, so the growth is that request's own.
"""

import io
import json
import random
import socket
import string
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from tests.support import Gunicorn, get_json, multipart, post
from tests.test_serving_faults import BOOT_SECONDS, served_copy

MEMORY_LIMIT_MB = 600  # the target: no single request raises the worker's peak by more
HEALTH_SECONDS = 5  # /health must answer within this while slow clients hold threads
HEADER_TIMEOUT = 3  # GUNICORN_HEADER_TIMEOUT for the server under test
READ_TIMEOUT = 3  # serving.read_timeout_seconds for the server under test


# -- the corpus --------------------------------------------------------------------------------


def png(mode: str, size: tuple[int, int], fill=0) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, fill).save(buffer, format="PNG")
    return buffer.getvalue()


def gradient_png(side: int, bits16: bool) -> bytes:
    ramp = np.linspace(0, 65535 if bits16 else 255, side, dtype=np.float64)
    pixels = np.add.outer(ramp, ramp) / 2
    image = Image.fromarray(pixels.astype(np.uint16 if bits16 else np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def jpeg(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, 90).save(buffer, format="JPEG", quality=50)
    return buffer.getvalue()


def dicom(
    rows: int = 64,
    columns: int = 64,
    syntax: str = ExplicitVRLittleEndian,
    pixel_data: bytes | None = None,
    frames: int | None = None,
    slope: str = "7.25",
) -> bytes:
    """A CT DICOM in memory; ``pixel_data`` as given (possibly inconsistent with the header)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = rows, columns
    if frames:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = slope, -1024
    ds.PixelData = pixel_data if pixel_data is not None else bytes(rows * columns * 2)
    buffer = io.BytesIO()
    known = syntax in (ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless)
    encoding = {} if known else {"implicit_vr": False, "little_endian": True}
    ds.save_as(buffer, enforce_file_format=True, **encoding)
    return buffer.getvalue()


def with_slope(text: str) -> bytes:
    """A valid CT DICOM whose RescaleSlope bytes are replaced by ``text`` (4 characters)."""
    data = dicom()
    assert data.count(b"7.25") == 1 and len(text) == 4
    return data.replace(b"7.25", text.encode())


def deflated_bomb(inflated_mb: int) -> bytes:
    """A Deflated DICOM whose dataset inflates to about ``inflated_mb`` MB: zeros, so it ships small."""
    side = int((inflated_mb * 1024 * 1024 / 2) ** 0.5)
    return dicom(side, side, DeflatedExplicitVRLittleEndian)


def header_patched_jpeg() -> bytes:
    """A small JPEG whose frame header (SOF0) claims 60000 x 60000 pixels."""
    data = jpeg((64, 64))
    sof = b"\xff\xc0\x00\x0b\x08\x00\x40\x00\x40"
    assert data.count(sof) == 1
    return data.replace(sof, b"\xff\xc0\x00\x0b\x08\xea\x60\xea\x60")


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    content_type: str
    statuses: tuple[int, ...]  # what the answer may be
    path: str = "/predict"
    says: str = ""  # a fragment the error message must hold


def corpus() -> list[Case]:
    huge_png = png("1", (7000, 7000))
    big_png = png("1", (4000, 3000))
    deep = b'{"image": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    cases = [
        Case("deflated DICOM inflating to 200 MB", *multipart([deflated_bomb(200)]), (413,), says="inflates"),
        Case("8 one-bit 7000 x 7000 PNGs in one request", *multipart([huge_png] * 8), (413,), says="7000 x 7000"),
        Case("3 PNGs each within, together over the request budget", *multipart([big_png] * 3), (413,),
             says="together"),
        Case("RLE DICOM declaring 7000 x 7000", *multipart([dicom(7000, 7000, RLELossless,
                                                                     encapsulate([bytes(64)]))]), (413,)),
        Case("DICOM declaring 2000 frames of 512 x 512", *multipart([dicom(512, 512, frames=2000,
                                                                          pixel_data=bytes(64))]), (413,)),
        Case("DICOM with an unknown transfer syntax", *multipart([dicom(syntax="1.2.3.4.5.6.7")]), (415,),
             says="not a standard transfer syntax"),
        Case("DICOM with a private transfer syntax", *multipart([dicom(syntax="1.3.6.1.4.1.99999.1")]), (415,)),
        Case("DICOM with pixel data shorter than its header", *multipart([dicom(pixel_data=bytes(10))]), (400,)),
        Case("DICOM with RescaleSlope 'ab'", *multipart([with_slope("ab  ")]), (400,), says="RescaleSlope"),
        Case("DICOM with RescaleSlope NaN", *multipart([with_slope("NaN ")]), (400,), says="RescaleSlope"),
        Case("DICOM with RescaleSlope inf", *multipart([with_slope("inf ")]), (400,), says="RescaleSlope"),
        Case("JPEG declaring 60000 x 60000 in its header", *multipart([header_patched_jpeg()]), (413,)),
        Case("JSON nested 100,000 deep", deep, "application/json", (400,), says="nested too deeply"),
        Case("JSON nested 100,000 deep to a task", deep, "application/json", (400, 404, 503),
             path="/predict/breast-cancer"),  # 503 when the task has no model: JSON is tested in process below
        Case("1,200 multipart parts", *multipart([b"x"] * 1200), (413,), says="parts"),
        # Within budget: answered 200, and the costliest legitimate inputs for memory.
        Case("16-bit PNG 4096 x 4096 (at the per-image budget)", *multipart([gradient_png(4096, True)]), (200,)),
        Case("JPEG 8192 x 6000 (decoded at half scale)", *multipart([jpeg((8192, 6000))]), (200,)),
        Case("CT DICOM 2048 x 2048", *multipart([dicom(2048, 2048)]), (200,)),
    ]
    return cases


# -- the server and its worker ----------------------------------------------------------------


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int) -> bool:
    """Reset the worker's VmHWM to its current RSS (Linux clear_refs 5); False where not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@dataclass
class Answer:
    case: Case
    status: int
    body: dict
    seconds: float
    growth_mb: float  # the worker's peak memory above its RSS before the request


@pytest.fixture(scope="module")
def server(trained_project, tmp_path_factory):
    config = {"serving": {"read_timeout_seconds": READ_TIMEOUT}}
    root = served_copy(trained_project, tmp_path_factory.mktemp("hostile"), config=config)
    env = {"GUNICORN_HEADER_TIMEOUT": str(HEADER_TIMEOUT), "GUNICORN_THREADS": "4"}
    with Gunicorn(root, workers=1, env=env) as gunicorn:
        (worker,) = gunicorn.wait_loaded(1, BOOT_SECONDS)
        gunicorn.worker = worker
        yield gunicorn


@pytest.fixture(scope="module")
def answers(server) -> list[Answer]:
    worker, found = server.worker, []
    for case in corpus():
        reset_peak(worker)
        before = status_kib(worker, "VmRSS")
        reply = post(server.url + case.path, case.body, case.content_type)
        growth = (status_kib(worker, "VmHWM") - before) / 1024
        found.append(Answer(case, reply.status, reply.json(), reply.seconds, growth))
    print("\nhostile corpus against gunicorn (1 worker, 4 threads):")
    for answer in found:
        print(f"  {answer.status}  {answer.seconds:5.2f} s  peak +{answer.growth_mb:6.1f} MB  {answer.case.name}")
    return found


def test_every_hostile_input_gets_its_4xx_or_200_within_budget(answers):
    wrong = [(a.case.name, a.status, a.body) for a in answers if a.status not in a.case.statuses]
    assert not wrong, wrong
    for answer in answers:
        if answer.status != 200:
            assert isinstance(answer.body.get("error"), str) and answer.case.says in answer.body["error"], answer


def test_no_request_raises_the_workers_peak_memory_beyond_the_target(server, answers):
    if not reset_peak(server.worker):
        pytest.skip("/proc/<pid>/clear_refs is not writable here: per-request peaks cannot be measured")
    worst = max(answers, key=lambda a: a.growth_mb)
    assert worst.growth_mb < MEMORY_LIMIT_MB, (worst.case.name, worst.growth_mb)


def test_the_worker_survives_the_corpus_and_still_serves(server, answers):
    assert server.workers() == [server.worker]
    assert "WORKER TIMEOUT" not in server.log_text() and "Traceback" not in server.log_text()
    status, body = get_json(f"{server.url}/health")
    assert status == 200 and body["status"] == "ok"
    image = multipart(("ok.png", png("L", (96, 96), 80)))
    assert post(f"{server.url}/predict", *image).status == 200


def test_no_absolute_server_path_in_health_or_ready(server):
    for path in ("/health", "/ready"):
        status, body = get_json(server.url + path)
        text = json.dumps(body)
        assert str(server.project) not in text and "/tmp/" not in text, text


# -- slow clients ------------------------------------------------------------------------------


def trickle(url: str, head: bytes, drip: bytes, seconds: float) -> tuple[bytes, float]:
    """Send ``head``, then ``drip`` one byte a second for at most ``seconds``; what came back and when."""
    port = urlparse(url).port
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=seconds + 30) as client:
        client.sendall(head)
        for byte in drip[: int(seconds)]:
            try:
                client.sendall(bytes([byte]))
            except OSError:
                break
            client.settimeout(1)
            try:
                answer = client.recv(4096)
                return answer, time.monotonic() - started
            except TimeoutError:
                continue
        client.settimeout(30)
        try:
            return client.recv(4096), time.monotonic() - started
        except OSError:
            return b"", time.monotonic() - started


def test_slow_header_and_slow_body_clients_do_not_starve_health(server):
    header_drip = b"X-Slow: " + b"a" * 200 + b"\r\n\r\n"
    body_head = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                 b"Content-Length: 100000\r\n\r\n")
    with ThreadPoolExecutor(3) as pool:
        slow = [
            pool.submit(trickle, server.url, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n", header_drip, 30),
            pool.submit(trickle, server.url, b"GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\n", header_drip, 30),
            # the body trickles for 6 s, then stops: the per-read timeout ends it
            pool.submit(trickle, server.url, body_head, b"--b\r\nConte", 6),
        ]
        time.sleep(1.5)  # the slow clients hold their threads now
        timings = []
        for _ in range(3):
            started = time.monotonic()
            status, _ = get_json(f"{server.url}/health", timeout=HEALTH_SECONDS)
            timings.append((status, time.monotonic() - started))
            time.sleep(0.5)
        results = [future.result() for future in slow]
    print(f"\n/health while slow clients trickle: {timings}; slow clients: "
          f"{[(answer[:12], round(seconds, 1)) for answer, seconds in results]}")
    assert all(status == 200 and seconds < HEALTH_SECONDS for status, seconds in timings), timings
    for answer, seconds in results[:2]:  # cut off at the header deadline, not after 30 s of trickling
        assert answer.startswith(b"HTTP/1.1 408") and seconds < HEADER_TIMEOUT + 3, (answer, seconds)
    answer, seconds = results[2]
    assert answer.startswith(b"HTTP/1.1 408") and seconds < 6 + READ_TIMEOUT + 5, (answer, seconds)
    assert server.workers() == [server.worker]


# -- bounded metrics ---------------------------------------------------------------------------


def series(url: str) -> set[str]:
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line.startswith("http_request")}


def raw_request(url: str, method: str, path: str) -> None:
    port = urlparse(url).port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        while client.recv(4096):
            pass


def test_random_methods_and_paths_add_no_metric_series(server):
    rng = random.Random(16)
    for method in ("BREW", "GET", "POST"):  # every fixed label the random requests below can reach
        raw_request(server.url, method, "/x-no-such-page")
    raw_request(server.url, "PURGE", "/health")
    before = series(server.url)
    for _ in range(150):
        method = "".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 12)))
        path = "/x-" + "".join(rng.choices(string.ascii_lowercase + "/", k=rng.randint(1, 40)))
        raw_request(server.url, rng.choice([method, "GET", "POST"]), path)
    after = series(server.url)
    assert after == before, sorted(after - before)[:10]


# -- in process: the tabular API's inputs --------------------------------------------------------


@pytest.fixture
def tabular_app():
    from flask import Flask

    from cancer_classifier.entity.tabular import ColumnSpec
    from cancer_classifier.serving.errors import register_error_handlers
    from cancer_classifier.tabular.serving import _payload, parse_rows

    columns = (ColumnSpec("size", "number", minimum=0, maximum=100), ColumnSpec("kind", "category",
                                                                                 categories=("a", "b")))
    app = Flask(__name__)
    register_error_handlers(app)

    @app.post("/rows")
    def rows():
        return {"rows": len(parse_rows(_payload(), columns, 10))}

    return app.test_client()


@pytest.mark.parametrize(
    "payload, says",
    [
        (b'{"features": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b'{"records": [{"size": 1' + b"0" * 400 + b', "kind": "a"}]}', "expected a number"),
        (json.dumps({"records": [{"size": "x" * 2_000_000, "kind": "a"}]}).encode(), "2,000,000 characters"),
        (json.dumps({"records": [{"size": 1, "kind": "a", "y" * 2_000_000: 1}]}).encode(), "unknown field"),
    ],
    ids=["deep JSON", "400-digit integer", "2 MB value", "2 MB field name"],
)
def test_tabular_inputs_get_a_short_400(tabular_app, payload, says):
    response = tabular_app.post("/rows", data=payload, content_type="application/json")
    assert response.status_code == 400, response.data[:300]
    error = response.get_json()["error"]
    assert says in error and len(error) < 1000, error[:300]


def test_the_jpeg_draft_side_is_the_predictors_max_side():
    from cancer_classifier.chest_ct.serving.inputs import JPEG_DRAFT_SIDE
    from cancer_classifier.core import limits

    assert JPEG_DRAFT_SIDE == limits.MAX_SIDE
