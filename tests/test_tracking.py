"""What a user reads when a tracking server fails: one line per kind of failure, no credentials."""

import pytest
import requests
from mlflow.exceptions import MlflowException, RestException, get_error_code

from cancer_classifier.core.tracking import explain, public_uri

URI = "https://user:secret-token@dagshub.com/u/r.mlflow"


def answered(status: int, endpoint: str = "/api/2.0/mlflow/experiments/get-by-name") -> MlflowException:
    """The exception MLflow raises for a non-JSON answer with ``status`` (rest_utils.verify_rest_response)."""
    return MlflowException(
        f"API request to endpoint {endpoint} failed with error code {status} != 200. Response body: '<html>'",
        error_code=get_error_code(status),
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (answered(401), "refused the credentials (HTTP 401): set MLFLOW_TRACKING_USERNAME"),
        (answered(403), "denied this user access (HTTP 403)"),
        (answered(502), "answered HTTP 502: the server is failing"),
        (
            MlflowException("API request to https://x failed with exception too many 500 error responses"),
            "answered HTTP 500: the server is failing",
        ),
        (answered(404, "/api/2.0/mlflow/logged-models/search"), "has no /api/2.0/mlflow/logged-models/search"),
        (answered(404), "it is not an MLflow server"),
        (MlflowException("API request to https://x failed with exception Max retries exceeded"), "cannot reach"),
        (requests.exceptions.ConnectionError("refused"), "cannot reach"),
        # a JSON error whose text mentions 401 is not a credentials problem
        (
            RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "version 401 not found"}),
            "failed: RESOURCE_DOES_NOT_EXIST: version 401 not found",
        ),
    ],
)
def test_each_failure_is_one_line_naming_the_server_without_its_credentials(error, expected):
    line = explain(error, URI)
    assert expected in line and "\n" not in line
    assert "secret-token" not in line and "dagshub.com/u/r.mlflow" in line


def test_public_uri_drops_credentials_and_keeps_ipv6_brackets():
    assert public_uri("http://u:p@[::1]:5000/x") == "http://[::1]:5000/x"
    assert public_uri(URI) == "https://dagshub.com/u/r.mlflow"
    assert public_uri("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
