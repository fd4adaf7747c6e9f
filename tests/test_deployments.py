"""Two deployments on one Redis server, as staging and production often are.

Redis pub/sub ignores the database number, so only the deployment's name keeps
one deployment's frames from the other's pages. The receiver is this test
process (its settings, its Redis channel layer, a channel in ``user.1``); each
sender is a fresh process with another deployment's environment that pushes to
``user.1`` through ``project.pushes``, the product's one way to push.
"""

from __future__ import annotations

import asyncio
import os
from urllib.parse import urlsplit, urlunsplit

import pytest
from channels.layers import get_channel_layer
from django.conf import settings

from project.pushes import user_group
from tests.fresh import fresh_process

PUSH = (
    "import os\n"
    "from project.pushes import send_event, user_group\n"
    "send_event(lambda: [(user_group(1), os.environ['FRAME'])])\n"
)


def _with_path(url: str, path: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=path))


def _push_from(frame: str, **env: str) -> None:
    fresh_process(PUSH, FRAME=frame, **env)


async def test_another_deployment_on_the_same_redis_server_reaches_no_page_of_this_one():
    assert settings.REDIS_URL, "needs the Redis channel layer"
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(user_group(1), channel)
    number = int(urlsplit(settings.REDIS_URL).path.strip("/") or 0)
    other_number = _with_path(settings.REDIS_URL, f"/{(number + 1) % 16}")
    database_url = os.environ["DATABASE_URL"]
    # Staging: another Redis database number, another database, its name by default.
    await asyncio.to_thread(
        _push_from,
        "from staging",
        REDIS_URL=other_number,
        DATABASE_URL=_with_path(database_url, urlsplit(database_url).path + "_staging"),
        TOLLGATE_DEPLOYMENT="",
    )
    # A process of this deployment on that other database number: it arrives, which
    # is why the number alone never kept deployments apart.
    await asyncio.to_thread(
        _push_from,
        "from this deployment",
        REDIS_URL=other_number,
        TOLLGATE_DEPLOYMENT=settings.TOLLGATE_DEPLOYMENT,
    )
    # Both senders have exited: Redis took staging's PUBLISH first.
    message = await asyncio.wait_for(layer.receive(channel), 10)
    assert message == {"type": "html.push", "html": "from this deployment"}
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(channel), 0.5)
