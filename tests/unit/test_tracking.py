"""MLflow helpers that need no server: parameter flattening, the login read from the environment, and the
error for an unset tracking URI (runs, metrics and registration are tested against a real MLflow server in
tests/integration/test_tracking.py)."""

import pytest

from codepmp.errors import ServiceError
from codepmp.tracking import MAX_PARAM_CHARS, flatten_params, http_status, tracking_login, tracking_uri


def test_nested_params_flatten_to_dotted_strings_cut_to_mlflows_limit():
    flat = flatten_params({"pretrain": {"lr": 1e-5, "sizes": [1, 2]}, "name": "x", "long": "a" * 10_000})
    assert flat == {"pretrain.lr": "1e-05", "pretrain.sizes": "[1, 2]", "name": "x", "long": "a" * MAX_PARAM_CHARS}


def test_login_needs_both_user_and_password():
    assert tracking_login({"MLFLOW_TRACKING_USERNAME": "u", "MLFLOW_TRACKING_PASSWORD": "p"}) == ("u", "p")
    assert tracking_login({"MLFLOW_TRACKING_USERNAME": "u"}) is None
    assert tracking_login({}) is None


def test_an_unset_tracking_uri_says_how_to_set_it(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ServiceError, match="MLFLOW_TRACKING_URI is not set"):
        tracking_uri()


def test_an_unreachable_url_gives_the_reason_not_an_exception():
    status = http_status("http://127.0.0.1:9/health", timeout_s=2.0, direct=True)
    assert isinstance(status, str) and status
