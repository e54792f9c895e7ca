"""Object store on the MinIO SDK: atomic writes, sorted listing, folder sync and completion markers.

    from codepmp.storage import ObjectStore
    store = ObjectStore.from_env()          # CODEPMP_S3_ENDPOINT, AWS_ACCESS_KEY_ID, ...
    store.put_json("runs/r1/crawl/stats.json", {"files": 10})
    store.mark_done("runs/r1/crawl", {"shards": 2})

The same variables point at the embedded stack (`codepmp up`) or a MinIO on a cluster:

    CODEPMP_S3_ENDPOINT    http://127.0.0.1:8333 (scheme decides TLS)
    AWS_ACCESS_KEY_ID      access key
    AWS_SECRET_ACCESS_KEY  secret key
    CODEPMP_BUCKET         bucket (default "codepmp")
    CODEPMP_S3_RETRY_S     how long an operation keeps retrying an unavailable endpoint (default 60)

Every operation retries connection errors and 5xx / SlowDown answers with exponential backoff (0.5 s
doubling to 8 s) for up to CODEPMP_S3_RETRY_S seconds, printing a line on stderr while it waits, so a
server that restarts mid-stage does not fail the stage; then it raises a ServiceError naming the endpoint.
Missing keys, refused credentials and missing buckets fail at once. The probe of `from_env` does not
retry: a stage whose store is down when it starts fails in seconds.

Every put uploads to a temporary key next to the final one (`<dir>/.tmp-<uuid>-<name>`), copies it
server-side to the final key and deletes the temporary one, so readers never see a partial object
and a writer killed midway never leaves a half-written final key. Listings hide temporary keys.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import posixpath
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urlparse

from codepmp.env import ACCESS_KEY_VAR, BUCKET_VAR, DEFAULT_BUCKET, ENDPOINT_VAR, SECRET_KEY_VAR
from codepmp.errors import InputError, ServiceError
from codepmp.retry import restart_policy, window_from_env

T = TypeVar("T")

DONE_MARKER = "_SUCCESS"
TMP_PREFIX = ".tmp-"
CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 300.0
STREAM_PART_SIZE = 16 * 1024 * 1024
MISSING_KEY_CODES = {"NoSuchKey", "NoSuchObject", "ResourceNotFound"}
RETRY_VAR = "CODEPMP_S3_RETRY_S"
DEFAULT_RETRY_S = 60.0
# Answers that mean "the server is busy or (re)starting", not "your request is wrong".
RETRYABLE_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "OperationAborted",
                   "XMinioServerNotInitialized", "XMinioReadQuorum", "XMinioWriteQuorum"}


def retry_window(environ: Mapping[str, str] | None = None) -> float:
    """Seconds from CODEPMP_S3_RETRY_S (default 60)."""
    return window_from_env(RETRY_VAR, DEFAULT_RETRY_S, environ)


def is_retryable(exc: BaseException) -> bool:
    """True for errors a later attempt can get past: no connection, a dropped one, a 5xx or SlowDown."""
    import urllib3
    from minio.error import S3Error, ServerError

    if isinstance(exc, S3Error):
        status = getattr(exc.response, "status", 0) or 0
        return exc.code in RETRYABLE_CODES or status >= 500
    if isinstance(exc, ServerError):
        return exc.status_code >= 500
    return isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


def _reason(exc: BaseException) -> object:
    # urllib3's MaxRetryError wraps the connection error that says what went wrong in `reason`.
    return getattr(exc, "reason", None) or exc


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split "s3://bucket/some/prefix" into ("bucket", "some/prefix"); InputError for anything else."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise InputError(f"'{uri}' is not an s3://bucket/prefix URI")
    return parsed.netloc, parsed.path.lstrip("/")


def is_temporary_key(key: str) -> bool:
    """True for the temporary keys that atomic puts write before the final copy."""
    return posixpath.basename(key).startswith(TMP_PREFIX)


def _temporary_key(key: str) -> str:
    folder, name = posixpath.split(key)
    tmp_name = f"{TMP_PREFIX}{uuid.uuid4().hex}-{name}"
    return posixpath.join(folder, tmp_name) if folder else tmp_name


def _folder_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def _http_client(secure: bool):
    """A urllib3 pool with short connect timeouts and few retries, so a dead endpoint fails in seconds."""
    import urllib3

    retries = urllib3.Retry(total=3, connect=1, read=2, backoff_factor=0.2,
                            status_forcelist=[500, 502, 503, 504])
    timeout = urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S)
    if not secure:
        return urllib3.PoolManager(timeout=timeout, retries=retries, maxsize=10)
    import certifi

    ca_certs = os.environ.get("SSL_CERT_FILE") or certifi.where()
    return urllib3.PoolManager(timeout=timeout, retries=retries, maxsize=10,
                               cert_reqs="CERT_REQUIRED", ca_certs=ca_certs)


class ObjectStore:
    """One bucket of an S3-compatible store (SeaweedFS, MinIO, AWS S3)."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, bucket: str = DEFAULT_BUCKET,
                 retry_s: float | None = None):
        """`retry_s`: how long each operation retries an unavailable endpoint (None: CODEPMP_S3_RETRY_S)."""
        from minio import Minio

        parsed = urlparse(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path.strip("/"):
            raise ServiceError(f"S3 endpoint '{endpoint}' must look like http(s)://host:port")
        self.endpoint = endpoint
        self.bucket = bucket
        self.retry_s = retry_window() if retry_s is None else max(0.0, retry_s)
        secure = parsed.scheme == "https"
        self.client = Minio(parsed.netloc, access_key=access_key, secret_key=secret_key,
                            secure=secure, http_client=_http_client(secure))

    @classmethod
    def from_env(cls, bucket: str | None = None, environ: Mapping[str, str] | None = None,
                 check: bool = True) -> ObjectStore:
        """Build a store from CODEPMP_S3_ENDPOINT / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / CODEPMP_BUCKET.

        With `check` the endpoint is probed once, so an unreachable server or bad credentials fail here.
        """
        env = os.environ if environ is None else environ
        missing = [name for name in (ENDPOINT_VAR, ACCESS_KEY_VAR, SECRET_KEY_VAR) if not env.get(name)]
        if missing:
            raise ServiceError(
                f"object store not configured: {', '.join(missing)} not set "
                f"(run `codepmp up` and `source ~/.codepmp/stack/env.sh`, or point them at a MinIO)")
        store = cls(env[ENDPOINT_VAR], env[ACCESS_KEY_VAR], env[SECRET_KEY_VAR],
                    bucket or env.get(BUCKET_VAR) or DEFAULT_BUCKET)
        if check:
            # One attempt only: a store that is down when a stage starts should fail it in seconds.
            with store._errors():
                store.client.bucket_exists(store.bucket)
        return store

    def with_bucket(self, bucket: str) -> ObjectStore:
        """The same endpoint and credentials, another bucket."""
        other = copy.copy(self)
        other.bucket = bucket
        return other

    def uri(self, key: str = "") -> str:
        """The s3:// URI of `key` in this bucket."""
        return f"s3://{self.bucket}/{key}"

    @contextlib.contextmanager
    def _errors(self, key: str = "") -> Iterator[None]:
        """Turn SDK and connection errors into InputError (missing key) or ServiceError (everything else)."""
        import urllib3
        from minio.error import MinioException, S3Error

        try:
            yield
        except S3Error as exc:
            if exc.code in MISSING_KEY_CODES and key:
                raise InputError(f"{self.uri(key)} does not exist") from None
            if exc.code == "NoSuchBucket":
                raise InputError(f"bucket '{self.bucket}' does not exist at {self.endpoint}") from None
            raise ServiceError(f"S3 request for {self.uri(key)} at {self.endpoint} failed: "
                               f"{exc.code}: {exc.message}") from exc
        except (MinioException, urllib3.exceptions.HTTPError, ConnectionError) as exc:
            raise ServiceError(f"S3 endpoint {self.endpoint} is unreachable or failed: {_reason(exc)}") from exc

    def _retrying(self, what: str, key: str, attempt: Callable[[], T], window: float | None = None) -> T:
        """`attempt()`, repeated with exponential backoff while it fails with a retryable error, for up to
        `window` seconds (default `self.retry_s`); errors mapped as by `_errors`."""
        window = self.retry_s if window is None else window

        def announce(exc: Exception, delay: float, failures: int) -> None:
            print(f"codepmp: waiting for S3 endpoint {self.endpoint} (could not {what} {self.uri(key)}: "
                  f"{_reason(exc)}); retrying in {delay:g} s, for up to {window:g} s in all ({RETRY_VAR})",
                  file=sys.stderr, flush=True)

        def unavailable(exc: Exception) -> ServiceError:
            return ServiceError(f"S3 endpoint {self.endpoint} stayed unavailable for {window:g} s ({RETRY_VAR}) "
                                f"while trying to {what} {self.uri(key)}: {_reason(exc)}")

        with self._errors(key):
            return restart_policy(window).call(attempt, lambda exc: window > 0 and is_retryable(exc),
                                               on_retry=announce, give_up=unavailable)

    def bucket_exists(self) -> bool:
        """True when the bucket exists; ServiceError when the endpoint is down or refuses the credentials."""
        return self._retrying("check bucket", "", lambda: self.client.bucket_exists(self.bucket))

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist."""
        from minio.error import S3Error

        if self.bucket_exists():
            return
        def make() -> None:
            try:
                self.client.make_bucket(self.bucket)
            except S3Error as exc:
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

        self._retrying("create bucket", "", make)

    def put_stream(self, key: str, stream: BinaryIO, length: int = -1,
                   content_type: str = "application/octet-stream") -> str:
        """Atomically write `length` bytes (or everything, with -1) read from `stream` to `key`."""
        from minio.commonconfig import CopySource

        tmp_key = _temporary_key(key)
        part_size = STREAM_PART_SIZE if length < 0 else 0
        # A retried upload must resend from where this one started; an unseekable stream cannot be.
        start = stream.tell() if stream.seekable() else None

        def upload() -> None:
            if start is not None:
                stream.seek(start)
            self.client.put_object(self.bucket, tmp_key, stream, length,
                                   content_type=content_type, part_size=part_size)

        try:
            self._retrying("upload", key, upload, window=None if start is not None else 0)
            self._retrying("publish", key,
                           lambda: self.client.copy_object(self.bucket, key, CopySource(self.bucket, tmp_key)))
        except BaseException:
            self._remove_quietly(tmp_key, window=0)
            raise
        # The final key is complete; the temporary one is hidden from listings but should not pile up.
        self._remove_quietly(tmp_key)
        return key

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Atomically write `data` to `key`."""
        return self.put_stream(key, io.BytesIO(data), len(data), content_type)

    def put_json(self, key: str, value: Any) -> str:
        """Atomically write `value` as indented, key-sorted JSON to `key`."""
        data = json.dumps(value, indent=2, sort_keys=True).encode()
        return self.put_bytes(key, data, "application/json")

    def put_file(self, key: str, path: str | Path) -> str:
        """Atomically upload the local file `path` to `key`."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"local file {path} does not exist")
        with path.open("rb") as stream:
            return self.put_stream(key, stream, path.stat().st_size)

    def _remove_quietly(self, key: str, window: float | None = None) -> None:
        with contextlib.suppress(Exception):
            self._retrying("remove", key, lambda: self.client.remove_object(self.bucket, key), window)

    def get_bytes(self, key: str) -> bytes:
        """The content of `key`; InputError naming s3://bucket/key when it does not exist."""
        def get() -> bytes:
            response = self.client.get_object(self.bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._retrying("read", key, get)

    def get_json(self, key: str) -> Any:
        """The JSON value stored at `key`."""
        try:
            return json.loads(self.get_bytes(key))
        except json.JSONDecodeError as exc:
            raise InputError(f"{self.uri(key)} is not valid JSON: {exc}") from None

    def get_file(self, key: str, path: str | Path) -> Path:
        """Download `key` to the local `path` (written to a side file, then renamed)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = path.with_name(f"{path.name}.{uuid.uuid4().hex}.part")
        try:
            self._retrying("download", key,
                           lambda: self.client.fget_object(self.bucket, key, str(path), tmp_file_path=str(tmp_path)))
        finally:
            tmp_path.unlink(missing_ok=True)
        return path

    def exists(self, key: str) -> bool:
        """True when `key` exists."""
        from minio.error import S3Error

        def stat() -> bool:
            try:
                self.client.stat_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in MISSING_KEY_CODES:
                    return False
                raise
            return True

        return self._retrying("check", key, stat)

    def _list_all(self, prefix: str) -> list[str]:
        # The whole listing is one attempt: a listing cut short by an outage is started again.
        return self._retrying("list", prefix, lambda: sorted(
            obj.object_name for obj in self.client.list_objects(self.bucket, prefix=prefix or None, recursive=True)
            if not obj.is_dir))

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys that start with `prefix` (plain S3 prefix match, recursive), temporary keys hidden."""
        return [key for key in self._list_all(prefix) if not is_temporary_key(key)]

    def upload_dir(self, local_dir: str | Path, prefix: str) -> list[str]:
        """Upload every file under `local_dir` to `prefix/<relative path>`; returns the keys written.

        A top-level `_SUCCESS` file is skipped, so copying a finished folder never marks the
        destination done before all of its files are there.
        """
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise InputError(f"local folder {local_dir} does not exist")
        folder = _folder_prefix(prefix)
        keys = []
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            relative = path.relative_to(local_dir).as_posix()
            if relative == DONE_MARKER:
                continue
            keys.append(self.put_file(folder + relative, path))
        return keys

    def download_dir(self, prefix: str, local_dir: str | Path) -> list[Path]:
        """Download every object under `prefix/` into `local_dir`, keeping relative paths.

        The completion marker at the top of `prefix` is not downloaded. InputError when nothing is there.
        """
        local_dir = Path(local_dir)
        folder = _folder_prefix(prefix)
        keys = [key for key in self.list(folder) if key != folder + DONE_MARKER]
        if not keys:
            raise InputError(f"{self.uri(folder)} holds no objects")
        paths = []
        for key in keys:
            relative = key[len(folder):]
            if not relative or ".." in relative.split("/"):
                raise InputError(f"{self.uri(key)} cannot be written below {local_dir}")
            paths.append(self.get_file(key, local_dir / relative))
        return paths

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under the folder `prefix/` (temporary keys included); returns the count."""
        from minio.deleteobjects import DeleteObject

        folder = _folder_prefix(prefix)
        if not folder:
            raise InputError("refusing to delete a whole bucket: give a non-empty prefix")
        keys = self._list_all(folder)
        errors = self._retrying("delete under", folder, lambda: list(
            self.client.remove_objects(self.bucket, [DeleteObject(k) for k in keys])))
        if errors:
            raise ServiceError(f"could not delete {len(errors)} objects under {self.uri(folder)}: "
                               f"{errors[0].code} {errors[0].name}")
        return len(keys)

    def mark_done(self, prefix: str, info: Mapping[str, Any] | None = None) -> str:
        """Write the completion marker `prefix/_SUCCESS` holding `info` as JSON."""
        return self.put_json(_folder_prefix(prefix) + DONE_MARKER, dict(info or {}))

    def is_done(self, prefix: str) -> bool:
        """True when `prefix/_SUCCESS` exists."""
        return self.exists(_folder_prefix(prefix) + DONE_MARKER)

    def done_info(self, prefix: str) -> dict[str, Any]:
        """The JSON stored in `prefix/_SUCCESS`; InputError when the prefix is not marked done."""
        return self.get_json(_folder_prefix(prefix) + DONE_MARKER)


class LocalFolder:
    """A local directory with the same small interface as `StoreFolder`; writes are atomic (temp file + rename)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.location = str(self.root)

    def uri(self, name: str) -> str:
        return str(self.root / name)

    def put_bytes(self, name: str, data: bytes) -> None:
        from codepmp.atomic import atomic_path

        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)

    def get_bytes(self, name: str) -> bytes:
        path = self.root / name
        if not path.is_file():
            raise InputError(f"{path} does not exist")
        return path.read_bytes()

    def exists(self, name: str) -> bool:
        return (self.root / name).is_file()

    def put_json(self, name: str, value: Any) -> None:
        self.put_bytes(name, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())

    def put_table(self, name: str, table, compression: str = "zstd") -> bytes:
        """Write `table` as Parquet (atomically, like every put); returns the bytes written."""
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        pq.write_table(table, sink, compression=compression)
        self.put_bytes(name, sink.getvalue())
        return sink.getvalue()

    def get_table(self, name: str, columns: list[str] | None = None):
        import pyarrow as pa
        import pyarrow.parquet as pq

        # Read from a copy in Arrow's own memory, not from the Python bytes: Arrow's I/O and worker threads hold
        # slices of the input after the read returns, and one releasing a Python-owned buffer takes the GIL. At
        # interpreter exit that aborted the process ("terminate called without an active exception", exit -6;
        # about once in 200 crawl runs, in a thread of Arrow's pool releasing a PyBuffer).
        copy = pa.BufferOutputStream()
        copy.write(self.get_bytes(name))
        return pq.read_table(pa.BufferReader(copy.getvalue()), columns=columns)

    def get_json(self, name: str) -> Any:
        try:
            return json.loads(self.get_bytes(name))
        except json.JSONDecodeError as exc:
            raise InputError(f"{self.uri(name)} is not valid JSON: {exc}") from None


class StoreFolder(LocalFolder):
    """A folder `prefix/` of an object-store bucket; puts are atomic (temp key, server-side copy)."""

    def __init__(self, store: ObjectStore, prefix: str):
        self.store, self.prefix = store, _folder_prefix(prefix)
        self.location = store.uri(self.prefix)

    def uri(self, name: str) -> str:
        return self.store.uri(self.prefix + name)

    def put_bytes(self, name: str, data: bytes) -> None:
        self.store.put_bytes(self.prefix + name, data)

    def get_bytes(self, name: str) -> bytes:
        return self.store.get_bytes(self.prefix + name)

    def exists(self, name: str) -> bool:
        return self.store.exists(self.prefix + name)


def open_folder(location: str | Path) -> LocalFolder:
    """`s3://bucket/prefix` (store from the environment, see `ObjectStore.from_env`) or a local directory."""
    location = str(location)
    if location.startswith("s3://"):
        bucket, prefix = parse_s3_uri(location)
        store = ObjectStore.from_env(bucket=bucket)
        store.ensure_bucket()
        return StoreFolder(store, prefix)
    return LocalFolder(location)
