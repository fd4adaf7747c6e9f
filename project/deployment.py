"""What sets one Tollgate deployment apart from the others: its name in a Redis
server it may share, and the exact origins its pages are served from.

Pure functions of environment values, called by ``project/settings.py`` while
it loads (so nothing here may touch ``django.conf.settings``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

#: Letters, digits, ``-`` and ``_``, at most 40: no ``.``, which separates the
#: parts of the Redis names built from it, so one name is never another's prefix
#: part; short enough that a channel name stays under Channels' 100 characters.
DEPLOYMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")


def deployment_default(*, database_name: str, secret_key: str) -> str:
    """The name of a deployment that sets none: 10 hex digits of an HMAC-SHA256 of
    ``database_name`` keyed with ``secret_key``.

    Two deployments get the same default only if they share both the database
    name and the secret key, so staging and production on one Redis server stay
    apart without configuration; every process of one deployment (web, worker,
    beat) derives the same name as long as they share both. The secret is not
    recoverable from the name.
    """
    digest = hmac.new(
        secret_key.encode(), b"tollgate-deployment:" + database_name.encode(), hashlib.sha256
    )
    return digest.hexdigest()[:10]


def deployment_name(configured: str, *, database_name: str, secret_key: str) -> str:
    """``configured`` (``TOLLGATE_DEPLOYMENT``) if set, else :func:`deployment_default`.

    Raises:
        ImproperlyConfigured: ``configured`` is not 1-40 letters, digits, ``-``, ``_``.
    """
    if not configured:
        return deployment_default(database_name=database_name, secret_key=secret_key)
    if not DEPLOYMENT_NAME.fullmatch(configured):
        raise ImproperlyConfigured(
            f"TOLLGATE_DEPLOYMENT={configured!r} is not a deployment name: use 1 to 40 "
            "letters, digits, '-' or '_', starting with a letter or digit."
        )
    return configured


def origin_exact(origin: str, *, setting: str) -> str:
    """``origin`` as ``scheme://host[:port]`` in lower case (a trailing ``/`` dropped).

    ``setting`` names the setting it came from, for the error.

    Raises:
        ImproperlyConfigured: not an http(s) origin naming one host (a path, a
            query, credentials, a wildcard, a leading ``.``, a bad port).
    """
    parts = urlsplit(origin.strip())
    try:
        port = parts.port
    except ValueError:
        port = -1
    host = parts.hostname or ""
    if (
        parts.scheme not in {"http", "https"}
        or not host
        or host.startswith(".")
        or "*" in parts.netloc
        or "@" in parts.netloc
        or parts.path not in {"", "/"}
        or parts.query
        or parts.fragment
        or port == -1
    ):
        raise ImproperlyConfigured(
            f"{setting}: {origin!r} is not an exact origin; write scheme://host[:port], "
            "such as https://tollgate.example.com or http://127.0.0.1:8000."
        )
    if ":" in host:  # IPv6, which urlsplit hands back without its brackets
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def websocket_origins(*, csrf_trusted_origins: Iterable[str], extra: Iterable[str]) -> list[str]:
    """The origins whose pages may open the WebSocket, exact, without duplicates.

    Every entry of ``csrf_trusted_origins`` except wildcards (``https://*.example.com``
    names no origin exactly), then every entry of ``extra``
    (``TOLLGATE_WEBSOCKET_ORIGINS``).

    Raises:
        ImproperlyConfigured: an entry is not an exact origin (:func:`origin_exact`).
    """
    origins: list[str] = []
    for setting, entries in (
        ("CSRF_TRUSTED_ORIGINS", [o for o in csrf_trusted_origins if "*" not in o]),
        ("TOLLGATE_WEBSOCKET_ORIGINS", list(extra)),
    ):
        for entry in entries:
            origin = origin_exact(entry, setting=setting)
            if origin not in origins:
                origins.append(origin)
    return origins
