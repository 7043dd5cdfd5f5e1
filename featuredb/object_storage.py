"""DuckDB access to s3:// URLs through the httpfs extension, with credentials from the environment only.

The S3 settings come from the usual AWS variables: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (both required),
AWS_SESSION_TOKEN, AWS_REGION or AWS_DEFAULT_REGION (default us-east-1), and AWS_ENDPOINT_URL_S3 or
AWS_ENDPOINT_URL for an S3-compatible server (e.g. http://127.0.0.1:9000, path-style). No key ever appears in a
message: errors are scrubbed of the secret values before they are raised.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

import duckdb

from featuredb.errors import FeatureDBError, NotFoundError
from featuredb.sql_literals import sql_string

SCHEME = "s3://"
SECRET_NAME = "featuredb_s3"
DEFAULT_REGION = "us-east-1"


def is_remote(path: object) -> bool:
    """True for an s3:// URL (a store or a Parquet export in object storage)."""
    return isinstance(path, str) and path[:len(SCHEME)].lower() == SCHEME


def is_remote_file(path: object) -> bool:
    """True for an s3:// URL of a .duckdb store (attached as it is); other s3:// URLs are Parquet export prefixes."""
    return is_remote(path) and str(path).lower().endswith(".duckdb")


def join_url(prefix: str, name: str) -> str:
    """`prefix/name` for an s3:// prefix (with or without a trailing slash)."""
    return f"{prefix.rstrip('/')}/{name}"


def bucket_of(url: str) -> str:
    """The bucket of an s3:// URL."""
    return url[len(SCHEME):].split("/", 1)[0]


def _secret_values() -> list[str]:
    return [v for v in (os.environ.get("AWS_SECRET_ACCESS_KEY"), os.environ.get("AWS_SESSION_TOKEN")) if v]


def scrub(text: str) -> str:
    """`text` with the environment's secret key and session token replaced by ***."""
    for value in _secret_values():
        text = text.replace(value, "***")
    return text


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def secret_sql(url: str) -> str:
    """CREATE TEMPORARY SECRET for S3 from the environment (the SQL holds the key: never print it)."""
    key_id = os.environ.get("AWS_ACCESS_KEY_ID")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not key_id or not secret:
        raise FeatureDBError(f"{url}: no S3 credentials in the environment "
                             "(set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    parts = [f"KEY_ID {sql_string(key_id)}", f"SECRET {sql_string(secret)}", f"REGION {sql_string(region)}"]
    token = os.environ.get("AWS_SESSION_TOKEN")
    if token:
        parts.append(f"SESSION_TOKEN {sql_string(token)}")
    endpoint = _endpoint()
    if endpoint:
        split = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        if split.scheme not in ("http", "https") or not split.netloc:
            raise FeatureDBError(f"{url}: the S3 endpoint {endpoint!r} (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL) "
                                 "is not an http:// or https:// URL")
        parts += [f"ENDPOINT {sql_string(split.netloc)}", "URL_STYLE 'path'",
                  f"USE_SSL {'true' if split.scheme == 'https' else 'false'}"]
    return f"CREATE OR REPLACE TEMPORARY SECRET {SECRET_NAME} (TYPE s3, {', '.join(parts)})"


def connect_object_storage(con: duckdb.DuckDBPyConnection, url: str) -> None:
    """Load httpfs into `con` and give it the environment's S3 credentials (for reading or writing `url`)."""
    from featuredb.search.extensions import load_extension

    load_extension(con, "httpfs")
    sql = secret_sql(url)
    try:
        con.execute(sql)
    except duckdb.Error as e:
        raise FeatureDBError(f"{url}: cannot set up S3 access from the environment: "
                             f"{scrub(_first_line(str(e)))}") from None


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else "unknown error"


def failure(url: str, error: BaseException, doing: str = "cannot read") -> FeatureDBError:
    """One line naming `url` for a DuckDB error met reading or writing it (no secret in it)."""
    text = scrub(str(error))
    line = re.sub(r"^(HTTP|IO) Error: ", "", _first_line(text))
    if "NoSuchBucket" in text:
        return NotFoundError(f"{url}: {doing}: the bucket {bucket_of(url)!r} does not exist")
    if "404" in line or "does not exist" in line:
        return NotFoundError(f"{url}: {doing}: no such object (or no such bucket)")
    if "403" in line or "AccessDenied" in text:
        return FeatureDBError(f"{url}: {doing}: access denied (check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
    if "Could not connect" in line or "Unable to connect" in line:
        where = _endpoint() or "the S3 endpoint"
        return FeatureDBError(f"{url}: {doing}: could not connect to {where}")
    return FeatureDBError(f"{url}: {doing}: {line}")
