"""gunicorn settings: ``gunicorn app:app`` picks this file up from the project folder.

Environment: PORT (default 8080), WEB_CONCURRENCY (workers, default 2), GUNICORN_THREADS (threads
per worker, default 4), GUNICORN_HEADER_TIMEOUT (seconds a client has to send its request line and
headers, default 10), GUNICORN_TIMEOUT (seconds, default 120),
PROMETHEUS_MULTIPROC_DIR (metrics files; a fresh temp folder by default),
TF_NUM_INTRAOP_THREADS (threads per worker; default: the cores divided among the workers).
MLflow calls are bounded by ``tracking.http_*`` in config/config.yaml (see docs/mlflow.md).
"""

import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from gunicorn.http.errors import NoMoreData
from gunicorn.workers.gthread import ThreadWorker

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8080')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Threaded workers, so a client that trickles its headers or body holds one thread, not the worker:
# the others keep answering /health, /ready and other clients. The model is CPU-bound and memory is
# budgeted per request, so each worker still decodes and predicts one image request at a time
# (routes.PREDICT_SLOT); the threads read uploads and answer the cheap endpoints meanwhile.
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
worker_connections = 200  # open connections per worker, idle keep-alive ones included
# Seconds a client has for its request line and headers, in total (HeaderDeadlineWorker below);
# the body has serving.read_timeout_seconds per read and a deadline of its own (serving/app.py).
header_timeout = float(os.environ.get("GUNICORN_HEADER_TIMEOUT", "10"))
http_parser = "python"  # the header deadline wraps the pure-Python parser's socket reads
# VGG16 on a small CPU: loading and a Grad-CAM request take seconds, not milliseconds. With threaded
# workers this bounds a worker that stops answering the master (e.g. stuck in a C call), not a request.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = 30
keepalive = 5
# Off: each worker imports the app and loads the model itself, after the fork. TensorFlow
# state does not survive fork() reliably, and a master without TensorFlow stays small.
preload_app = False
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = 50 if max_requests else 0
accesslog = None  # the app writes one JSON line per request itself
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
control_socket_disable = True  # gunicorn 26's control socket is shared by every instance of a user
limit_request_line = 4094
limit_request_fields = 100


REQUEST_TIMEOUT_REPLY = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


def _header_deadline(unreader) -> None:
    """Make the parser's socket reads respect ``unreader.header_deadline`` (monotonic seconds, or None)."""
    if getattr(unreader, "header_deadline_armed", False) or not hasattr(unreader, "sock"):
        return
    read = unreader.chunk

    def chunk():
        deadline = unreader.header_deadline
        if deadline is None:
            return read()
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            unreader.sock.settimeout(remaining)
            return read()
        except (TimeoutError, socket.timeout):
            try:  # say why, briefly, then close: the thread is free again
                unreader.sock.settimeout(1)
                unreader.sock.sendall(REQUEST_TIMEOUT_REPLY)
            except OSError:
                pass
            raise NoMoreData(b"") from None

    unreader.chunk = chunk
    unreader.header_deadline_armed = True


class HeaderDeadlineWorker(ThreadWorker):
    """gunicorn's threaded worker, with a deadline for each request's line and headers.

    gthread reads a request's headers in a pool thread from a blocking socket without a timeout, so a
    client sending one byte a second would hold that thread for as long as it likes. Here the reads
    are bounded by ``header_timeout`` in total; then the client gets a 408 and the connection closes.
    """

    def handle(self, conn):
        def init():
            type(conn).init(conn)  # gthread calls init() before each request it parses on conn
            unreader = getattr(conn.parser, "unreader", None)
            if unreader is not None and not conn.is_http2:
                _header_deadline(unreader)
                unreader.header_deadline = time.monotonic() + header_timeout

        conn.init = init
        return super().handle(conn)


worker_class = HeaderDeadlineWorker


def pre_request(worker, req):
    """The headers are in: the deadline is over, the body's own timeouts (serving/app.py) take over."""
    unreader = getattr(req, "unreader", None)
    if unreader is not None and getattr(unreader, "header_deadline", None) is not None:
        unreader.header_deadline = None
        try:
            unreader.sock.settimeout(None)
        except OSError:
            pass


# Several workers need prometheus_client's multiprocess mode, chosen when prometheus_client is
# first imported: set the folder here, in the master, before any worker imports the app.
_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
_created_metrics_dir = not _metrics_dir
if _created_metrics_dir:
    _metrics_dir = tempfile.mkdtemp(prefix="cancer-classifier-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir


def post_fork(server, worker):
    """Share the CPU cores among the workers: each worker's TensorFlow (and oneDNN) gets its part.

    Without this every worker starts one thread per core, and N workers on N cores oversubscribe the
    machine N-fold under load. Set before the worker imports TensorFlow (preload_app is off); an
    explicit TF_NUM_INTRAOP_THREADS / OMP_NUM_THREADS in the environment wins.
    """
    threads = str(max(1, len(os.sched_getaffinity(0)) // workers))
    for variable in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(variable, threads)
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")  # a sync worker runs one request at a time


def on_starting(server):
    """Start from an empty metrics folder: stale files from an earlier run would be counted."""
    folder = Path(_metrics_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for item in folder.iterdir():
        if item.is_dir():
            shutil.rmtree(item)
        else:
            item.unlink()


def child_exit(server, worker):
    """Drop a dead worker's live gauges (model_loaded, model_load_seconds) from /metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the metrics folder this file created (one given through the environment is kept)."""
    if _created_metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
