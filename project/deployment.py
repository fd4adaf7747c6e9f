"""What sets one Tollgate deployment apart from the others: its name in a Redis
server it may share.

Pure functions of environment values, called by ``project/settings.py`` while
it loads (so nothing here may touch ``django.conf.settings``).
"""

from __future__ import annotations

import hashlib
import hmac
import re

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
