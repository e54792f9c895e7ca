"""The codepmp-mlflow-users Job: the pipeline's MLflow login, made through MLflow's REST API as the admin.

Creates the user MLFLOW_TRACKING_USERNAME of the codepmp-s3 Secret, or, when it exists, sets its password
to the Secret's MLFLOW_TRACKING_PASSWORD, so a rerun after a rotation applies it. The user is not an
admin: with `default_permission = NO_PERMISSIONS` it sees the experiments and models it creates, and
nothing else. The standard library only, so it runs in the MLflow server image as it is.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request

CREATE_USER = "/api/2.0/mlflow/users/create"
UPDATE_PASSWORD = "/api/2.0/mlflow/users/update-password"
WAIT_S = float(os.environ.get("MLFLOW_WAIT_S", "600"))


def call(base: str, method: str, path: str, auth: tuple[str, str] | None = None,
         body: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(base + path, method=method)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, data=data, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_until_healthy(base: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            if call(base, "GET", "/health")[0] == 200:
                return
            reason = "not healthy yet"
        except OSError as error:
            reason = str(error)
        if time.monotonic() > deadline:
            sys.exit(f"MLflow at {base} did not become healthy within {WAIT_S:g} s: {reason}")
        print(f"waiting for {base}: {reason}", flush=True)
        time.sleep(3)


def main() -> None:
    base = os.environ.get("MLFLOW_URL", "http://mlflow:5000").rstrip("/")
    admin = (os.environ["MLFLOW_AUTH_ADMIN_USERNAME"], os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"])
    user, password = os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    if user == admin[0]:
        sys.exit("Secret codepmp-s3 key MLFLOW_TRACKING_USERNAME names MLflow's admin "
                 "(codepmp-mlflow-admin): give the pipeline a user of its own (manifests/README.md, Secrets)")
    wait_until_healthy(base)

    login = {"username": user, "password": password}
    status, text = call(base, "POST", CREATE_USER, admin, login)
    if status == 200:
        print(f"created MLflow user {user}")
        return
    if status in (401, 403):
        sys.exit(f"MLflow refuses the admin login of Secret codepmp-mlflow-admin (HTTP {status}): MLflow made "
                 "its admin from that Secret at its first start and ignores later changes; set the Secret back, "
                 "or change the admin's password through MLflow (manifests/README.md, Rotation)")
    if "RESOURCE_ALREADY_EXISTS" not in text:
        sys.exit(f"creating MLflow user {user} failed (HTTP {status}): {text}")
    status, text = call(base, "PATCH", UPDATE_PASSWORD, admin, login)
    if status != 200:
        sys.exit(f"setting the password of MLflow user {user} failed (HTTP {status}): {text}")
    print(f"MLflow user {user} exists; its password is the one in Secret codepmp-s3")


if __name__ == "__main__":
    main()
