"""Fixtures for the API's tests: keys and a client that sends them."""

from __future__ import annotations

import pytest
from django.test import Client

from accounts.services import api_key_create
from tests.factories import ModelConfigFactory

ALL_SCOPES = ("chat", "approvals", "read")


@pytest.fixture
def demo_model(db):
    return ModelConfigFactory(is_default=True)


def key_for(user, *scopes: str, name: str = "test key") -> str:
    """A new key of ``user`` with ``scopes`` (default: all); the key itself."""
    _, key = api_key_create(user=user, name=name, scopes=scopes or ALL_SCOPES)
    return key


def bearer(key: str) -> Client:
    """A test client that sends ``key`` on every request."""
    return Client(HTTP_AUTHORIZATION=f"Bearer {key}")


@pytest.fixture
def api_client(user) -> Client:
    return bearer(key_for(user))


# -- the production topology (daphne, a Celery worker, Celery beat) ----------------------


@pytest.fixture(scope="package")
def stack():
    """The whole topology on a fresh database, shared by this folder's topology tests."""
    import os

    from tests.topology import ROOT, stack_running

    logs = ROOT / "test-artifacts" / "api"
    with stack_running(name=f"tollgate_api_{os.getpid()}", logs=logs) as topology:
        yield topology
