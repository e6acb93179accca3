"""Where a shard folder lives: a local path (pathlib, as always) or a URL such as `s3://bucket/prefix` (fsspec).

The trainer only reads from here (the run folder and checkpoints are always local). Five helpers cover
every read `mlb.data` makes: `join`, `is_file`, `read_bytes`, `read_text`, `open_binary`; `check_folder`
probes a URL once, before the first read, so that a wrong endpoint, bucket or prefix fails at once with a
message naming the URL and the fix.

S3 (s3fs): the endpoint is `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` (read here and passed on, so a
changed variable gives another client rather than a cached one), credentials the usual
`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (botocore's own lookup). A tar is read with one GET into
memory (`open_binary`): the point of shards is one request per shard. Timeouts are short and retries few, so
an unreachable endpoint fails in seconds rather than minutes.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import IO, Any

PathOrURL = str | os.PathLike

# Short enough that a wrong endpoint fails in seconds (2 x 2 attempts x 2 s at worst), long enough for a
# busy object store; botocore's standard retry mode also retries throttling and 5xx answers.
S3_RETRIES = 2  # s3fs's own loop around each call (a class attribute, 5 by default)


def _s3_options() -> dict[str, Any]:
    """A fresh dict each time: botocore rewrites the `retries` dict it is given, and a changed dict would
    change fsspec's instance-cache key (a new client, and no listing cache, on every call)."""
    return {
        "endpoint_url": _endpoint(),
        "config_kwargs": {  # botocore.config.Config
            "connect_timeout": 2,
            "read_timeout": 30,
            "retries": {"total_max_attempts": 2, "mode": "standard"},
        },
    }


class StorageError(OSError):
    """A URL that cannot be read (endpoint unreachable, no such bucket or prefix, no credentials); the
    message names the URL and the fix."""


def is_url(path: PathOrURL) -> bool:
    """True for `scheme://...` strings. (A pathlib.Path cannot hold one: it folds `//` to `/`.)"""
    return isinstance(path, str) and "://" in path


def join(base: PathOrURL, name: str) -> PathOrURL:
    return f"{base.rstrip('/')}/{name}" if is_url(base) else Path(base) / name


def is_file(path: PathOrURL) -> bool:
    if not is_url(path):
        return Path(path).is_file()
    fs, where = _fs(path)
    try:  # fs.info, not fs.isfile: isfile answers False on any error, an unreachable endpoint included
        return _call(path, fs.info, where)["type"] == "file"  # from check_folder's cached listing: no request
    except FileNotFoundError:
        return False


def read_bytes(path: PathOrURL) -> bytes:
    """The whole file; FileNotFoundError when it does not exist (local and remote alike)."""
    if not is_url(path):
        return Path(path).read_bytes()
    fs, where = _fs(path)
    return _call(path, fs.cat_file, where, max_concurrency=1)  # one GET (no HEAD, no ranged parts)


def read_text(path: PathOrURL) -> str:
    return Path(path).read_text() if not is_url(path) else read_bytes(path).decode()


def open_binary(path: PathOrURL) -> IO[bytes]:
    """A seekable binary file: the local file itself, or a remote object read whole with one request."""
    return open(path, "rb") if not is_url(path) else io.BytesIO(read_bytes(path))  # the caller closes it


def check_folder(url: str) -> None:
    """One listing of a remote folder; StorageError naming the URL and the fix when it is not there.

    The listing stays in fsspec's cache, so `is_file` on its entries (each tar in sizes.json) costs nothing."""
    if not is_url(url):
        return
    fs, where = _fs(url)
    fs.invalidate_cache(where)  # a folder uploaded since the last look must be seen
    try:
        _call(url, fs.ls, where, detail=False)
    except FileNotFoundError:
        bucket = where.split("/", 1)[0]
        if not _call(url, fs.exists, bucket):
            raise StorageError(
                f"{url}: bucket {bucket!r} does not exist at {_endpoint_name()}: check the URL, or "
                "AWS_ENDPOINT_URL (--s3-endpoint) if the bucket lives on another server"
            ) from None
        raise StorageError(
            f"{url}: nothing under this prefix in bucket {bucket!r} at {_endpoint_name()}: check the URL, or "
            "upload the shard folder there (e.g. `aws s3 sync OUT/shards/cached s3://BUCKET/PREFIX/shards/cached`)"
        ) from None


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _endpoint_name() -> str:
    return _endpoint() or "the default AWS endpoint"


def _fs(url: str):
    """fsspec's filesystem for the URL and the path within it. fsspec caches instances per (process,
    options), so loader workers forked from the trainer get their own client."""
    import fsspec

    protocol = url.split("://", 1)[0]
    try:
        fs_class = fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError) as err:
        extra = " (pip install s3fs, or mlbpipe[s3])" if protocol in ("s3", "s3a") else ""
        raise StorageError(f"{url}: cannot read {protocol}:// URLs here: {err}{extra}") from None
    options = _s3_options() if protocol in ("s3", "s3a") else {}
    fs = fsspec.filesystem(protocol, **options)
    if protocol in ("s3", "s3a"):
        fs.retries = S3_RETRIES
    return fs, fs_class._strip_protocol(url)


def _call(url: str, function, *args, **kwargs):
    """Run one fsspec call; connection and credential faults become a StorageError that says what to fix.
    FileNotFoundError passes through (the callers say which file is missing and why it matters)."""
    try:
        return function(*args, **kwargs)
    except FileNotFoundError:
        raise
    except PermissionError as err:
        raise StorageError(
            f"{url}: access denied ({err}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy"
        ) from None
    except Exception as err:  # noqa: BLE001 (botocore's errors are not OSErrors; name them all the same way)
        name = type(err).__name__
        if name == "NoCredentialsError":
            fix = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        elif "Connect" in name or "Timeout" in name or isinstance(err, (ConnectionError, TimeoutError)):
            fix = (
                f"check that the server at {_endpoint_name()} is up, or set AWS_ENDPOINT_URL (--s3-endpoint)"
            )
        else:
            fix = "check the URL, the endpoint and the credentials"
        raise StorageError(f"{url}: cannot be read ({name}: {err}): {fix}") from None
