"""Connecting to Redis, and translating redis-py errors into queuectl's.

Works with redis-py 4.3 (Debian 12) and current releases: only the
``Redis.from_url`` keyword arguments and ``Retry``/``NoBackoff``
classes that both provide are used, except ``driver_info``, which is passed
only to redis-py versions that define ``redis.DriverInfo``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .config import RedisConfig
from .errors import ConfigError, RedisCommandError, RedisUnavailableError


def display_url(url: str) -> str:
    """Return the URL with any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, ""))


def read_password(path: str, key: str = "redis.password_file") -> str:
    """Read a password file: its first line, without the line break."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{key}: {path} not found; create it or fix the path") from None
    except PermissionError:
        raise ConfigError(
            f"{key}: {path}: permission denied; make it readable by this user"
        ) from None
    except OSError as error:
        raise ConfigError(f"{key}: {path}: {error.strerror}") from None
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise ConfigError(f"{key}: {path} is empty; put the password on its first line")
    return lines[0]


def password(settings: RedisConfig) -> str | None:
    """Return the Redis password: a systemd credential if one is given, else the file.

    A daemon started with ``LoadCredential=NAME:PATH`` finds the password in
    ``$CREDENTIALS_DIRECTORY/NAME``, so the file itself can stay readable by
    root only; the CLI, run by root, reads ``redis.password_file``.
    """
    folder = os.environ.get("CREDENTIALS_DIRECTORY")
    if settings.password_credential and folder:
        credential = Path(folder) / settings.password_credential
        if credential.exists():
            return read_password(str(credential), "redis.password_credential")
    if settings.password_file:
        return read_password(settings.password_file)
    return None


def connect(settings: RedisConfig, *, block_s: float = 0.0) -> redis.Redis:
    """Return a client for ``settings``; nothing is sent until the first command.

    ``block_s`` is the longest blocking command the caller will send; the
    socket timeout is stretched to cover it.
    """
    options: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout_s + block_s,
        "socket_connect_timeout": settings.connect_timeout_s,
        # A script whose reply was lost may have run: resending it could
        # claim or enqueue twice.  Callers decide when to retry, so the
        # client never does (redis-py 6 and later would retry by default).
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }
    if hasattr(redis, "DriverInfo"):
        # redis-py 8.2 reads its own version from the installed package's
        # metadata for each new connection, to send it with CLIENT SETINFO.
        # That search of sys.path takes milliseconds, and redis.__version__
        # is the same string.
        options["driver_info"] = redis.DriverInfo(lib_version=redis.__version__)
    if settings.username:
        options["username"] = settings.username
    secret = password(settings)
    if secret is not None:
        options["password"] = secret
    if settings.url.startswith("rediss://"):
        tls_files = {
            "ssl_ca_certs": settings.tls_ca_file,
            "ssl_certfile": settings.tls_cert_file,
            "ssl_keyfile": settings.tls_key_file,
        }
        options.update({name: path for name, path in tls_files.items() if path})
    if settings.url.startswith("unix://"):
        # Unix sockets take no TCP options.
        options.pop("socket_connect_timeout")
    try:
        return redis.Redis.from_url(settings.url, **options)
    except ValueError as error:
        raise ConfigError(
            f"redis.url {display_url(settings.url)!r} is not a valid Redis URL: {error}"
        ) from None


def close(client: redis.Redis) -> None:
    """Close every connection of ``client``; redis-py 4.3's close() leaves pooled ones open."""
    client.close()
    client.connection_pool.disconnect()


@contextlib.contextmanager
def translated(url: str) -> Iterator[None]:
    """Turn redis-py exceptions raised inside the block into ``QueueError``s."""
    shown = display_url(url)
    try:
        yield
    except redis.AuthenticationError as error:
        raise _rejected_login(shown, error) from None
    except (redis.ConnectionError, redis.TimeoutError) as error:
        reason = describe(error)
        if "certificate verify failed" in reason:
            hint = "set redis.tls_ca_file to the CA that signed the server's certificate"
        else:
            hint = "check that redis-server runs there, or set redis.url"
        raise RedisUnavailableError(f"cannot reach Redis at {shown}: {reason}; {hint}") from None
    except redis.ResponseError as error:
        # redis-py 4.3 reports a rejected login as a plain error reply.
        if str(error).startswith(("WRONGPASS", "NOAUTH")):
            raise _rejected_login(shown, error) from None
        raise RedisCommandError(
            f"Redis at {shown} returned an error: {_reply_text(error)}"
        ) from None
    except redis.RedisError as error:
        raise RedisCommandError(f"Redis at {shown} failed: {error}") from None


def _rejected_login(shown: str, error: redis.RedisError) -> RedisCommandError:
    return RedisCommandError(
        f"Redis at {shown} rejected the credentials ({error}); "
        "check redis.username and redis.password_file"
    )


def _reply_text(error: redis.ResponseError) -> str:
    """Return an error reply without the script location Redis appends to it."""
    text = str(error).split(". script: ", 1)[0].strip()
    if "maxmemory" in text:
        text += (
            "; free memory in Redis or raise its maxmemory, and keep maxmemory-policy noeviction"
        )
    return text


def describe(error: BaseException) -> str:
    """Return a short, single-line reason for a connection error."""
    text = str(error).strip() or type(error).__name__
    for marker in (
        "certificate verify failed",
        "Connection refused",
        "No such file or directory",
        "Timeout",
        "timed out",
        "Name or service not known",
        "Permission denied",
    ):
        if marker.lower() in text.lower():
            return marker.lower()
    return text.splitlines()[0]
