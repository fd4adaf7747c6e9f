"""Broken streams on every route: llmock's OpenAI, Anthropic and (through its
OpenAI handler) Azure endpoints, and an Ollama stand-in (``tests/ollama.py``), cut,
drop, corrupt and stall a reply before and after its first text, and the gateway
(then the run) ends each one as what it is, with its true cause.

A fault before any text is retried unseen; after text it fails the call with the
partial text kept and marked as cut, never stored or shown as a complete answer,
and what was sent is charged.
"""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync

from conversations.gateway import GatewayError, stream_chat
from conversations.models import Conversation, Message, ModelConfig, Run
from tests.conversations.conftest import advance_and_push, send

MESSAGES = [{"role": "user", "content": "Say hello"}]
TEXT = "one two three four five six seven eight nine ten"

#: (litellm model, llmock provider, key variable) per route. The Anthropic model is
#: in litellm's price map, so both routes are priced.
ROUTES = {
    "openai": ("openai/gpt-4o-mini", "openai", "OPENAI_API_KEY"),
    "anthropic": ("anthropic/claude-haiku-4-5", "anthropic", "ANTHROPIC_API_KEY"),
    "azure": ("azure/gpt-4o-mini", "azure", "AZURE_API_KEY"),
}


class _AzurePath:
    """Azure's chat URL (``/openai/deployments/<name>/chat/completions``) answered by
    llmock's OpenAI handler, behind llmock's own fault-injecting middleware: Azure
    speaks OpenAI's wire, and litellm reads it through its own wrapper."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        path = "/v1/chat/completions"
        await self.app.router({**scope, "path": path, "raw_path": path.encode()}, receive, send)


@pytest.fixture
def azure_route(llmock_server, monkeypatch):
    """llmock with Azure's chat URL, and litellm's Azure settings pointing at it."""
    from starlette.routing import Route

    path = "/openai/deployments/{deployment}/chat/completions"
    app = llmock_server.app
    if not any(getattr(r, "path", None) == path for r in app.router.routes):
        app.router.routes.insert(0, Route(path, _AzurePath(app), methods=["POST"]))
    monkeypatch.setenv("AZURE_API_KEY", "llmock-test-key")
    monkeypatch.setenv("AZURE_API_VERSION", "2024-10-21")
    return llmock_server.url


#: Chunks sent before the fault: AFTER_TEXT lets a few words through on both routes
#: (OpenAI: a role chunk, then a word a chunk; Anthropic: message_start,
#: content_block_start and a ping, then a word a chunk); BEFORE_TEXT none (the
#: role chunk or message_start only).
AFTER_TEXT = 5
BEFORE_TEXT = 1


def route_config(llmock, route: str, **fields) -> ModelConfig:
    model, provider, key = ROUTES[route]
    return ModelConfig(
        name=f"Mock {route}",
        litellm_model=model,
        api_base=llmock.url if provider == "azure" else llmock.base_url(provider),
        api_key_env=key,
        max_output_tokens=64,
        **fields,
    )


@pytest.fixture(autouse=True)
def _quick(settings):
    settings.TOLLGATE_LLM_MAX_RETRIES = 2
    settings.TOLLGATE_LLM_TIMEOUT = 20
    settings.TOLLGATE_LLM_IDLE_TIMEOUT = 0.5


@pytest.fixture(params=sorted(ROUTES))
def route(request) -> str:
    if request.param == "azure":
        request.getfixturevalue("azure_route")
    return request.param


class Shown:
    """The deltas a call showed (its ``on_delta``), and when the last one came."""

    def __init__(self) -> None:
        self.deltas: list[str] = []
        self.last = 0.0

    async def __call__(self, text: str) -> None:
        self.deltas.append(text)
        self.last = time.monotonic()

    @property
    def text(self) -> str:
        return "".join(self.deltas)


FAULTS_AFTER_TEXT = [
    ("truncate", "provider_down", "stopped before finishing its answer"),
    ("disconnect", "provider_down", "Lost the connection"),
    ("corrupt", "provider_down", "sent a reply that could not be read"),
    ("stall", "timeout", "stopped sending in the middle of its answer (nothing for 0.5 seconds)"),
]


def inject(llmock, fault: str, after_chunks: int) -> None:
    if fault == "stall":
        # 1.5 s: three idle timeouts, and short enough for llmock to journal the request.
        llmock.stall(after_chunks=after_chunks, seconds=1.5)
    else:
        getattr(llmock, fault)(after_chunks=after_chunks)


@pytest.mark.parametrize(("fault", "kind", "words"), FAULTS_AFTER_TEXT)
async def test_a_fault_after_text_fails_with_its_cause_and_the_text_so_far(
    llmock, route, fault, kind, words
):
    config = route_config(llmock, route)
    llmock.reply(TEXT, times=None)
    inject(llmock, fault, AFTER_TEXT)
    shown = Shown()
    with pytest.raises(GatewayError) as excinfo:
        await stream_chat(config=config, messages=MESSAGES, on_delta=shown)
    ended = time.monotonic()
    error = excinfo.value
    assert error.kind == kind
    assert words in error.user_message and f"Mock {route}" in error.user_message
    assert shown.text and TEXT.startswith(shown.text) and shown.text != TEXT
    assert error.partial == shown.text
    assert len(llmock.requests) == 1  # text was shown: never replayed over it
    # What was sent is known, to be charged: the prompt and the words so far.
    assert error.usage is not None
    assert error.usage.prompt_tokens > 0
    assert 0 < error.usage.completion_tokens < 20
    assert error.usage.cost_usd is not None and error.usage.cost_usd > 0
    assert ended - shown.last < 1.2  # a stall ends at the idle timeout


@pytest.mark.parametrize("fault", ["truncate", "disconnect", "corrupt", "stall"])
async def test_a_fault_before_text_is_retried_unseen(llmock, route, fault):
    config = route_config(llmock, route)
    llmock.reply(TEXT, times=None)
    inject(llmock, fault, BEFORE_TEXT)
    shown = Shown()
    result = await stream_chat(config=config, messages=MESSAGES, on_delta=shown)
    assert result.content == shown.text == TEXT
    assert result.finish_reason == "stop"
    assert len(llmock.requests) == 2
    # The broken attempt had begun (the provider answered it): charged, apart.
    assert result.broken is not None and result.broken.prompt_tokens > 0
    assert result.charged.prompt_tokens == result.prompt_tokens + result.broken.prompt_tokens


async def test_a_stream_cut_before_anything_is_retried(llmock, route):
    config = route_config(llmock, route)
    llmock.reply(TEXT, times=None)
    llmock.truncate(after_chunks=0)
    result = await stream_chat(config=config, messages=MESSAGES)
    assert result.content == TEXT
    assert len(llmock.requests) == 2


async def test_a_stall_before_the_first_chunk_is_left_to_the_request_timeout(
    llmock, route, settings
):
    """The idle timeout counts between chunks: a model may think for long before its
    first one (then TOLLGATE_LLM_TIMEOUT applies)."""
    config = route_config(llmock, route)
    llmock.reply("slow start")
    llmock.slow_first_token(1.2)
    result = await stream_chat(config=config, messages=MESSAGES)
    assert result.content == "slow start"
    assert len(llmock.requests) == 1


async def test_a_slow_but_steady_stream_is_not_stalled(llmock, route):
    config = route_config(llmock, route)
    llmock.reply("one two three four")
    llmock.pace(200)  # 0.2 s between chunks, under the 0.5 s idle timeout: 1.4 s in all
    result = await stream_chat(config=config, messages=MESSAGES)
    assert result.content == "one two three four"
    assert result.latency_ms > 500


async def test_a_stream_cut_every_time_fails_once_retries_are_spent(llmock, route, settings):
    settings.TOLLGATE_LLM_MAX_RETRIES = 1
    config = route_config(llmock, route)
    llmock.reply(TEXT, times=None)
    llmock.truncate(after_chunks=BEFORE_TEXT, times=None)
    with pytest.raises(GatewayError) as excinfo:
        await stream_chat(config=config, messages=MESSAGES)
    assert "stopped before finishing its answer" in excinfo.value.user_message
    assert excinfo.value.partial == ""
    assert len(llmock.requests) == 2
    # Both broken attempts had begun: both are charged.
    assert excinfo.value.usage is not None and excinfo.value.usage.prompt_tokens > 0


# -- the run: outcome, message, charge ----------------------------------------------


def advance(run: Run) -> Run:
    async_to_sync(advance_and_push)(run_id=run.pk, worker="test-worker")
    run.refresh_from_db()
    return run


@pytest.fixture
def saved_route(db, llmock, route) -> ModelConfig:
    config = route_config(llmock, route)
    config.max_output_tokens = 256
    config.save()
    return config


@pytest.mark.django_db
@pytest.mark.parametrize(("fault", "kind", "words"), FAULTS_AFTER_TEXT)
def test_a_broken_reply_fails_its_run_keeps_its_text_cut_and_is_charged(
    user, saved_route, llmock, fault, kind, words
):
    from accounts.models import UsageRecord
    from conversations.engine import history_messages

    conversation = Conversation.objects.create(owner=user, model_config=saved_route)
    llmock.reply(TEXT, times=None)
    inject(llmock, fault, AFTER_TEXT)
    run = advance(send(conversation, "count to ten"))
    assert run.status == Run.Status.FAILED
    assert words in run.error and saved_route.name in run.error
    assert run.metadata["error_kind"] == kind
    answer = Message.objects.get(run=run, role=Message.Role.ASSISTANT)
    assert answer.status == Message.Status.FAILED  # never complete
    assert answer.content and TEXT.startswith(answer.content) and answer.content != TEXT
    assert answer.metadata["cut"] == kind
    # The model never reads a cut reply back as if it were its answer.
    assert answer.content not in [m["content"] for m in history_messages(conversation=conversation)]
    # Charged for what was sent: the prompt and the words so far.
    [record] = UsageRecord.objects.filter(run_id=run.pk)
    assert record.prompt_tokens == answer.prompt_tokens > 0
    assert record.completion_tokens == answer.completion_tokens > 0
    assert record.cost_usd == answer.cost_usd > 0


@pytest.mark.django_db
def test_the_page_shows_a_cut_reply_as_cut(user, saved_route, llmock, client):
    conversation = Conversation.objects.create(owner=user, model_config=saved_route)
    llmock.reply(TEXT, times=None)
    llmock.truncate(after_chunks=AFTER_TEXT)
    run = advance(send(conversation, "count to ten"))
    answer = Message.objects.get(run=run, role=Message.Role.ASSISTANT)
    client.force_login(user)
    page = client.get(f"/c/{conversation.pk}/").content.decode()
    assert answer.content.split()[0] in page
    assert "Cut off" in page
    assert "stopped before finishing its answer" in page


@pytest.mark.django_db
def test_a_fault_before_text_completes_the_run_and_charges_both_attempts(user, saved_route, llmock):
    from accounts.models import UsageRecord

    conversation = Conversation.objects.create(owner=user, model_config=saved_route)
    llmock.reply(TEXT, times=None)
    llmock.disconnect(after_chunks=BEFORE_TEXT)
    run = advance(send(conversation, "count to ten"))
    assert run.status == Run.Status.COMPLETED
    answer = Message.objects.get(run=run, role=Message.Role.ASSISTANT)
    assert (answer.status, answer.content) == (Message.Status.COMPLETE, TEXT)
    broken = answer.metadata["broken_attempts"]
    [record] = UsageRecord.objects.filter(run_id=run.pk)
    assert record.prompt_tokens == answer.prompt_tokens + broken["prompt_tokens"]
    assert record.cost_usd == answer.cost_usd + Decimal(broken["cost_usd"])


@pytest.mark.django_db
def test_a_stopped_reply_is_charged_for_what_was_sent(user, saved_route, llmock, monkeypatch,
                                                      settings):  # fmt: skip
    from asgiref.sync import sync_to_async

    from accounts.models import UsageRecord
    from conversations import engine

    settings.TOLLGATE_STREAM_PERSIST_SECONDS = 0
    monkeypatch.setattr(engine, "FIRST_PERSIST_SECONDS", 0)
    original = engine._persist_partial
    seen: list[str] = []

    def persist_then_stop(run_id, worker, message_id, text):
        seen.append(text)
        if len(text.split()) >= 3:  # Stop pressed after a few words
            Run.objects.filter(pk=run_id).update(cancel_requested=True)
        return original.func(run_id, worker, message_id, text)

    monkeypatch.setattr(engine, "_persist_partial", sync_to_async(persist_then_stop))
    conversation = Conversation.objects.create(owner=user, model_config=saved_route)
    llmock.reply(" ".join(f"word{i}" for i in range(60)))
    llmock.pace(30)
    run = advance(send(conversation, "count to sixty"))
    assert run.status == Run.Status.CANCELLED
    answer = Message.objects.get(run=run, role=Message.Role.ASSISTANT)
    assert answer.status == Message.Status.STOPPED
    assert answer.content.startswith("word0 word1 word2")
    assert "word59" not in answer.content
    [record] = UsageRecord.objects.filter(run_id=run.pk)
    assert record.prompt_tokens == answer.prompt_tokens > 0
    # The output counted so far: each word a token or two, never the whole reply.
    words = len(answer.content.split())
    assert words <= record.completion_tokens <= 3 * words + 2
    assert record.cost_usd == answer.cost_usd > 0
    assert answer.metadata["cut"] == "stopped"


# -- Ollama: JSON lines, not SSE (a stand-in server: llmock has no Ollama endpoint) --------


@pytest.fixture(scope="module")
def ollama():
    from tests.ollama import OllamaServer

    server = OllamaServer().start()
    yield server
    server.stop()


def ollama_config(ollama) -> ModelConfig:
    # Ollama runs locally: an admin confirms its price, $0.
    return ModelConfig(
        name="Mock ollama",
        litellm_model="ollama_chat/llama3",
        api_base=ollama.url,
        input_cost_per_token=Decimal(0),
        output_cost_per_token=Decimal(0),
    )


@pytest.mark.parametrize(("fault", "kind", "words"), FAULTS_AFTER_TEXT)
async def test_ollama_a_fault_after_text_fails_with_its_cause(ollama, fault, kind, words):
    from tests.ollama import Script

    ollama.script = Script(text=TEXT, fault="malformed" if fault == "corrupt" else fault, after=3)
    shown = Shown()
    with pytest.raises(GatewayError) as excinfo:
        await stream_chat(config=ollama_config(ollama), messages=MESSAGES, on_delta=shown)
    error = excinfo.value
    assert error.kind == kind and words in error.user_message
    assert shown.text == error.partial == "one two three "
    assert len(ollama.script.requests) == 1
    assert error.usage is not None and error.usage.completion_tokens > 0


@pytest.mark.parametrize("fault", ["truncate", "disconnect", "malformed"])
async def test_ollama_a_fault_before_text_is_retried_unseen(ollama, fault):
    """(Ollama sends text from its first line, so a stall before text is one before
    the first chunk: left to the request timeout, as on the other routes.)"""
    from tests.ollama import Script

    ollama.script = Script(text=TEXT, fault=fault, after=0)
    shown = Shown()
    result = await stream_chat(config=ollama_config(ollama), messages=MESSAGES, on_delta=shown)
    assert result.content == shown.text == TEXT
    assert len(ollama.script.requests) == 2


async def test_only_json_payloads_are_checked_in_raw_lines():
    """SSE fields other than data (event, id, retry) and comments are not JSON."""
    from conversations.gateway import _decodable_lines, _Undecodable

    async def lines(*items):
        for item in items:
            yield item

    fine = ["event: ping", "id: 5", "retry: 100", ": keep-alive", "", 'data: {"a": 1}',
            b'{"b": 2}', "data: [DONE]"]  # fmt: skip
    assert [x async for x in _decodable_lines(lines(*fine))] == fine
    with pytest.raises(_Undecodable):
        [x async for x in _decodable_lines(lines('data: {"a": 1}', 'data: {"a": '))]
    with pytest.raises(_Undecodable):
        [x async for x in _decodable_lines(lines(b'{"done": tr'))]
