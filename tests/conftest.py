"""Fixtures shared by every test folder."""

from __future__ import annotations

import sys

import pytest

from tests.factories import DEFAULT_PASSWORD, UserFactory

# The test process runs llmock's uvicorn server in a thread; uvicorn picks uvloop
# when it can import it. A segmentation fault was seen once in another thread of
# the test process while that server ran on uvloop, so the tests use asyncio's
# own loop everywhere (the product never uses uvloop: daphne runs on Twisted's
# asyncio reactor, Celery tasks on asyncio.run).
sys.modules.setdefault("uvloop", None)  # type: ignore[arg-type]


@pytest.fixture(scope="session", autouse=True)
def _thread_connections_closed(django_db_setup, django_db_blocker):
    """Close the connection of the thread asgiref runs thread-sensitive calls on
    outside ``async_to_sync`` before the test database is dropped (PostgreSQL
    refuses to drop a database that has connections), and those of executor
    threads that have ended (the default executors of the tests' event loops):
    collecting their thread-local connection objects closes them."""
    yield
    import asyncio
    import gc

    from asgiref.sync import sync_to_async
    from django.db import connections

    with django_db_blocker.unblock():
        asyncio.run(sync_to_async(connections.close_all)())
    gc.collect()


@pytest.fixture(autouse=True)
def _guardrails_forgotten():
    """Each test starts without another's cached guardrails."""
    from approvals.selectors import guardrails_cache_clear

    guardrails_cache_clear()
    yield
    guardrails_cache_clear()


@pytest.fixture(autouse=True)
def _tools_offered_forgotten():
    """Each test starts without another's cached lists of tools offered."""
    from tools.offered import tools_offered_cache_clear

    tools_offered_cache_clear()


@pytest.fixture(autouse=True)
def _clean_ratelimit_keys():
    """Forget rate-limit counters of earlier tests and runs: user ids repeat per test
    database, and a sliding window still counts the minute before."""
    from django.conf import settings

    def clean():
        if settings.REDIS_URL:
            import redis

            client = redis.Redis.from_url(settings.REDIS_URL)
            keys = list(
                client.scan_iter(match=f"{settings.TOLLGATE_RATELIMIT_KEY_PREFIX}*", count=1000)
            )
            if keys:
                client.delete(*keys)
            client.close()

    clean()
    yield
    clean()


@pytest.fixture(autouse=True)
def _circuit_breakers_closed():
    """Each test starts with every model deployment's circuit breaker closed and no
    cached reply: those are another test's (``conversations.breaker`` and
    ``conversations.replycache``, in Django's cache)."""
    from django.conf import settings
    from django.core.cache import cache

    from conversations.breaker import breaker_forget

    breaker_forget()
    if settings.REDIS_URL:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL)
        for pattern in ("*llm-breaker:*", "*llm-reply:*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.delete(*keys)
        client.close()
    else:
        cache.clear()


@pytest.fixture
def password() -> str:
    return DEFAULT_PASSWORD


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def other_user(db):
    return UserFactory()


@pytest.fixture
def admin_user(db):
    return UserFactory(is_staff=True, is_superuser=True)


@pytest.fixture
def user_client(client, user):
    client.force_login(user)
    return client


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    """Run the browser tests last.

    Playwright's sync API keeps an event loop running in the main thread while
    its session-scoped browser is open, which breaks any later test that uses
    ``async_to_sync`` or an asyncio runner. ``trylast`` so this applies after
    pytest-django's own reordering.
    """
    items.sort(
        key=lambda item: "e2e" in item.path.parts or item.get_closest_marker("e2e") is not None
    )
