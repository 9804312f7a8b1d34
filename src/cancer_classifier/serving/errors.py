"""Typed API errors and the one place that turns any error into a JSON reply.

A route raises ``ApiError(status, message)``; the handler answers ``{"error": message}`` with that
status. Anything unexpected is logged with its traceback server-side and answered with a generic
500, so a stack trace never reaches the client.
"""

from flask import Flask, g, jsonify
from werkzeug.exceptions import ClientDisconnected, HTTPException

from cancer_classifier.utils.logging import logger

SUPPORTED_TYPES = "PNG, JPEG or DICOM"


class ApiError(Exception):
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


class ServiceUnavailable(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(503, message)


def _reply(status: int, message: str):
    body = {"error": message}
    if "request_id" in g:
        body["request_id"] = g.request_id
    response = jsonify(body)
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(error: ApiError):
        g.error = error.message
        return _reply(error.status, error.message)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        status = error.code or 500
        if isinstance(error, ClientDisconnected) and isinstance(error.__context__, TimeoutError):
            status = 408  # the body stopped arriving: the socket's read timeout (app.py) fired
            message = f"the request body did not arrive within {app.config['READ_TIMEOUT_SECONDS']:g} s"
            g.error = message
            response = _reply(status, message)
            response.headers["Connection"] = "close"
            return response
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"the upload is larger than the {limit / 1024 / 1024:g} MB limit" if limit else "too large"
        else:
            message = error.description or error.name
        g.error = message
        return _reply(status, message)

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        # The traceback goes to the server log only; the client gets a request id to quote.
        logger.exception("unhandled error in request %s", g.get("request_id", "-"))
        g.error = "internal error"
        return _reply(500, "internal server error; quote the request_id when reporting it")
