"""Typed API errors and the one place that turns any error into a JSON reply.

A route raises ``ApiError(status, message)``; the handler answers ``{"error": message}`` with that
status. Anything unexpected is logged with its traceback server-side and answered with a generic
500, so a stack trace never reaches the client.
"""

import re
from pathlib import Path

from flask import Flask, current_app, g, jsonify, request
from werkzeug.exceptions import ClientDisconnected, HTTPException, RequestEntityTooLarge

from cancer_classifier.core import settings
from cancer_classifier.core.errors import CancerClassifierError
from cancer_classifier.core.logging import logger

SUPPORTED_TYPES = "PNG, JPEG or DICOM"
# A value or field name quoted back to the client (and into the log) is cut to this many characters.
MAX_ECHO_CHARS = 60
# No error message, however built, is longer than this in a reply or a log line.
MAX_MESSAGE_CHARS = 1000
# An absolute path in a message: "/" then path characters, up to a space, quote, bracket or colon.
ABSOLUTE_PATH = re.compile(r"(?<![\w:/.])/[^\s'\"()\[\]{}<>:;,]+")


def clip(value: object, limit: int = MAX_ECHO_CHARS) -> str:
    """``repr`` of a client's value, cut to ``limit`` characters: safe to quote in a message or log."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value):,} characters)"
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        return "(a value too long to show)"
    return text if len(text) <= limit else f"{text[:limit]}..."


def public_text(text: str, root: Path | None = None) -> str:
    """``text`` without absolute server paths: those under the project become relative, others their
    file name. A path counts when it has two parts or more and its first folder exists here (so a
    route such as /predict/<task> is left alone)."""
    root = root or settings.project_root()

    def relative(match: re.Match) -> str:
        found = match.group(0)
        parts = Path(found).parts
        if len(parts) < 3 or not Path("/", parts[1]).is_dir():
            return found
        path = Path(found)
        for base in (root, settings.CHECKOUT_DIR):
            try:
                return str(path.relative_to(base))
            except ValueError:
                continue
        return path.name or "."

    return ABSOLUTE_PATH.sub(relative, text)


class ApiError(CancerClassifierError):
    """An error the client can act on: HTTP status plus a message safe to show."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BadRequest(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(400, message)


class UnsupportedMediaType(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(415, message)


class PayloadTooLarge(ApiError):
    """The upload is over a size or decode budget (413)."""

    def __init__(self, message: str) -> None:
        super().__init__(413, message)


class ServiceUnavailable(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(503, message)


def json_body():
    """The request's JSON, or None when it is not JSON; 400 when it nests deeper than the parser can go
    (Python's json raises RecursionError, not ValueError, which Flask's ``silent`` does not catch)."""
    try:
        return request.get_json(silent=True)
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply") from None


def too_large_message(error: RequestEntityTooLarge) -> str:
    """Which of werkzeug's limits a 413 came from: the body size, the number of multipart parts, or
    the size of a non-file form field (werkzeug raises the same exception, without a description)."""
    config = current_app.config
    limit = config.get("MAX_CONTENT_LENGTH")
    size = request.content_length
    if limit and size is not None and size > limit:
        return f"the upload is larger than the {limit / 1024 / 1024:g} MB limit"
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    owner = frame.tb_frame.f_locals.get("self") if frame is not None else None
    parts = getattr(owner, "max_parts", None)
    if parts is not None and getattr(owner, "_parts_decoded", 0) > parts:
        return f"the multipart body has more than {parts} parts; send at most {config.get('MAX_BATCH', parts)} files"
    field_limit = config.get("MAX_FORM_MEMORY_SIZE")
    if owner is not None and type(owner).__module__.startswith(("werkzeug.formparser", "werkzeug.sansio.multipart")):
        return f"a multipart field that is not a file is larger than {field_limit or 0:,} bytes; send images as files"
    if limit:
        return f"the upload is larger than the {limit / 1024 / 1024:g} MB limit"
    return "the request is too large"


def _reply(status: int, message: str):
    message = public_text(message)
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "..."
    g.error = message
    body = {"error": message}
    if "request_id" in g:
        body["request_id"] = g.request_id
    response = jsonify(body)
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(CancerClassifierError)
    def user_error(error: CancerClassifierError):
        """The package's errors carry their HTTP status (core/errors.py); ApiError's message may be amended."""
        if error.status >= 500:
            logger.error("request %s: %s", g.get("request_id", "-"), error)
        return _reply(error.status, getattr(error, "message", str(error)))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        status = error.code or 500
        if isinstance(error, ClientDisconnected) and isinstance(error.__context__, TimeoutError):
            status = 408  # the body stopped arriving: the socket's read timeout (app.py) fired
            message = f"the request body did not arrive within {app.config['READ_TIMEOUT_SECONDS']:g} s"
            response = _reply(status, message)
            response.headers["Connection"] = "close"
            return response
        if isinstance(error, RequestEntityTooLarge):
            message = too_large_message(error)
        else:
            message = error.description or error.name
        return _reply(status, message)

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        # The traceback goes to the server log only; the client gets a request id to quote.
        logger.exception("unhandled error in request %s", g.get("request_id", "-"))
        return _reply(500, "internal server error; quote the request_id when reporting it")
