"""The environment variables that connect a process to the object store and MLflow, named once: the embedded
stack sets them, the clients read them, and the cluster passes them to pods (plain values from the ConfigMap,
keys from the Secret)."""

ENDPOINT_VAR = "CODEPMP_S3_ENDPOINT"
BUCKET_VAR = "CODEPMP_BUCKET"
ACCESS_KEY_VAR = "AWS_ACCESS_KEY_ID"
SECRET_KEY_VAR = "AWS_SECRET_ACCESS_KEY"
TRACKING_URI_VAR = "MLFLOW_TRACKING_URI"
USERNAME_VAR = "MLFLOW_TRACKING_USERNAME"
PASSWORD_VAR = "MLFLOW_TRACKING_PASSWORD"

DEFAULT_BUCKET = "codepmp"
"""The bucket when CODEPMP_BUCKET is unset, for the embedded stack and every client alike."""

SERVICE_VARS = (ENDPOINT_VAR, TRACKING_URI_VAR)
"""Both set: use those services; the CLI starts the embedded stack otherwise."""
CONFIG_MAP_VARS = (ENDPOINT_VAR, BUCKET_VAR, TRACKING_URI_VAR)
"""What a pod reads from the codepmp-env ConfigMap."""
SECRET_VARS = (ACCESS_KEY_VAR, SECRET_KEY_VAR)
"""What a pod reads from the codepmp-s3 Secret."""
LOGIN_VARS = (USERNAME_VAR, PASSWORD_VAR)
"""Also from the Secret, optional: only an MLflow server with auth needs them."""
