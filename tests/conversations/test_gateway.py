"""The gateway against llmock, a real OpenAI-compatible HTTP server on loopback,
and against the offline demo provider."""

from __future__ import annotations

import pytest

from conversations.gateway import GatewayError, stream_chat
from conversations.models import ModelConfig
from tests.fresh import fresh_process

MESSAGES = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def config(llmock) -> ModelConfig:
    # Unsaved: the gateway needs no database.
    return ModelConfig(
        name="Mock GPT",
        litellm_model="openai/gpt-4o-mini",
        api_base=llmock.base_url("openai"),
        api_key_env="OPENAI_API_KEY",
        max_output_tokens=64,
    )


@pytest.fixture(autouse=True)
def _short_waits(settings):
    settings.TOLLGATE_LLM_MAX_RETRIES = 3
    settings.TOLLGATE_LLM_TIMEOUT = 20


async def test_streams_deltas_usage_and_cost(llmock, config):
    llmock.reply("one two three four five six")
    deltas: list[str] = []

    async def on_delta(text: str) -> None:
        deltas.append(text)

    result = await stream_chat(config=config, messages=MESSAGES, on_delta=on_delta)
    assert len(deltas) > 1
    assert "".join(deltas) == result.content == "one two three four five six"
    assert result.prompt_tokens > 0
    assert result.completion_tokens > 0
    assert result.cost_usd is not None and result.cost_usd > 0  # streamed, still priced
    assert result.finish_reason == "stop"
    assert result.ttft_ms is not None
    body = llmock.last_request.body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 64


async def test_price_override_wins(llmock, config):
    from decimal import Decimal

    config.input_cost_per_token = Decimal("0.001")
    config.output_cost_per_token = Decimal("0.002")
    result = await stream_chat(config=config, messages=MESSAGES)
    expected = result.prompt_tokens * Decimal("0.001") + result.completion_tokens * Decimal("0.002")
    assert result.cost_usd == expected


async def test_retries_429_honouring_retry_after(llmock, config):
    llmock.rate_limit(times=2, retry_after=0.3)
    result = await stream_chat(config=config, messages=MESSAGES)
    assert result.content
    statuses = [r.status for r in llmock.requests]
    assert statuses == [429, 429, 200]
    llmock.assert_resilient()  # llmock's verdict: waited at least Retry-After, no storm


async def test_retries_503(llmock, config):
    llmock.fail(503, times=1, retry_after=0.2)
    result = await stream_chat(config=config, messages=MESSAGES)
    assert result.content
    assert [r.status for r in llmock.requests] == [503, 200]
    llmock.assert_resilient()


async def test_gives_up_when_provider_stays_down(llmock, config, settings):
    settings.TOLLGATE_LLM_MAX_RETRIES = 1
    llmock.fail(503, times=None, retry_after=0.1)
    with pytest.raises(GatewayError) as excinfo:
        await stream_chat(config=config, messages=MESSAGES)
    assert excinfo.value.kind == "provider_down"
    assert "unavailable" in excinfo.value.user_message
    assert len(llmock.requests) == 2


async def test_401_is_a_clear_auth_error_without_retry(llmock, config):
    llmock.fail(401, times=None)
    with pytest.raises(GatewayError) as excinfo:
        await stream_chat(config=config, messages=MESSAGES)
    assert excinfo.value.kind == "auth"
    assert "API key" in excinfo.value.user_message
    assert "OPENAI_API_KEY" in excinfo.value.user_message
    assert len(llmock.requests) == 1
    llmock.assert_resilient()  # retried_non_retryable would fail here


async def test_context_overflow_is_named(llmock, config):
    llmock.context_overflow()
    with pytest.raises(GatewayError) as excinfo:
        await stream_chat(config=config, messages=MESSAGES)
    assert excinfo.value.kind == "context_too_long"
    assert "too long" in excinfo.value.user_message
    assert len(llmock.requests) == 1


async def test_missing_key_variable(llmock, config, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(GatewayError) as excinfo:
        await stream_chat(config=config, messages=MESSAGES)
    assert excinfo.value.kind == "auth"
    assert "OPENAI_API_KEY is not set" in excinfo.value.user_message
    assert llmock.requests == []


async def test_tool_call_is_assembled(llmock, config):
    llmock.call_tool("calc__evaluate", {"expression": "17*23"})
    tools = [{"type": "function", "function": {"name": "calc__evaluate", "parameters": {}}}]
    result = await stream_chat(config=config, messages=MESSAGES, tools=tools)
    assert result.finish_reason == "tool_calls"
    [call] = result.tool_calls
    assert call["function"]["name"] == "calc__evaluate"
    assert call["id"]
    import json

    assert json.loads(call["function"]["arguments"]) == {"expression": "17*23"}


# -- faults in the middle of a stream (read past litellm's wrapper) ----------


async def test_openai_stream_is_read_past_litellms_wrapper(llmock, config, monkeypatch):
    # The chunks come from the OpenAI SDK's stream, not litellm's per-chunk wrapper.
    from litellm.litellm_core_utils.streaming_handler import CustomStreamWrapper

    def wrapped(self):  # pragma: no cover - fails the test if reached
        raise AssertionError("litellm's wrapper was iterated")

    monkeypatch.setattr(CustomStreamWrapper, "__anext__", wrapped)
    llmock.reply("alpha beta gamma")
    result = await stream_chat(config=config, messages=MESSAGES)
    assert result.content == "alpha beta gamma"
    assert result.completion_tokens > 0 and result.finish_reason == "stop"


@pytest.mark.parametrize(
    ("fault", "kind", "words"),
    [
        ("disconnect", "provider_down", "Lost the connection"),
        ("truncate", "provider_down", "stopped before finishing"),
        ("corrupt", "provider_down", "could not be read"),
    ],
)
async def test_stream_broken_after_text_fails_without_retry(llmock, config, fault, kind, words):
    llmock.reply("one two three four five six seven eight")
    getattr(llmock, fault)(after_chunks=3)
    deltas: list[str] = []

    async def on_delta(text: str) -> None:
        deltas.append(text)

    with pytest.raises(GatewayError) as excinfo:
        await stream_chat(config=config, messages=MESSAGES, on_delta=on_delta)
    assert excinfo.value.kind == kind
    assert words in excinfo.value.user_message
    assert deltas  # text had been shown: the call is not replayed over it
    assert len(llmock.requests) == 1


async def test_stream_cut_before_text_is_retried(llmock, config):
    llmock.reply("one two three", times=None)
    llmock.truncate(after_chunks=0)
    result = await stream_chat(config=config, messages=MESSAGES)
    assert result.content == "one two three"
    assert len(llmock.requests) == 2
    llmock.assert_resilient()


async def test_a_stale_pooled_connection_is_retried_at_once(llmock, config, monkeypatch, settings):
    """A keep-alive connection the provider closed while idle fails the request at
    the start: not a provider failure, so retried at once even with retries off."""
    import aiohttp
    import litellm

    settings.TOLLGATE_LLM_MAX_RETRIES = 0
    real = litellm.acompletion
    calls = []

    async def first_on_a_closed_connection(**kwargs):
        calls.append(kwargs["model"])
        if len(calls) == 1:
            try:
                raise aiohttp.ServerDisconnectedError()
            except aiohttp.ServerDisconnectedError as cause:
                raise litellm.InternalServerError(
                    "Connection error.", llm_provider="openai", model=kwargs["model"]
                ) from cause
        return await real(**kwargs)

    monkeypatch.setattr(litellm, "acompletion", first_on_a_closed_connection)
    llmock.reply("fresh connection")
    result = await stream_chat(config=config, messages=MESSAGES)
    assert result.content == "fresh connection"
    assert len(calls) == 2 and len(llmock.requests) == 1

    async def provider_down(**kwargs):  # a real 500 is the provider's: not retried here
        calls.append(kwargs["model"])
        raise litellm.InternalServerError("boom", llm_provider="openai", model=kwargs["model"])

    calls.clear()
    monkeypatch.setattr(litellm, "acompletion", provider_down)
    with pytest.raises(GatewayError) as excinfo:
        await stream_chat(config=config, messages=MESSAGES)
    assert excinfo.value.kind == "provider_down" and len(calls) == 1


# -- the offline demo provider ------------------------------------------------

DEMO = ModelConfig(name="Demo", litellm_model="demo/tollgate")


def _tool(name: str, **properties: dict) -> dict:
    return {
        "type": "function",
        "function": {
            "name": name,
            "parameters": {"type": "object", "properties": properties},
        },
    }


async def test_demo_streams_text_with_usage():
    deltas: list[str] = []

    async def on_delta(text: str) -> None:
        deltas.append(text)

    result = await stream_chat(
        config=DEMO, messages=[{"role": "user", "content": "hello"}], on_delta=on_delta
    )
    assert len(deltas) > 3
    assert "".join(deltas) == result.content
    assert "demo model" in result.content
    assert result.prompt_tokens > 0 and result.completion_tokens > 0
    assert result.tool_calls == []


@pytest.mark.parametrize(
    ("text", "tool", "arguments"),
    [
        ("what time is it in Tokyo?", "time__now", {"timezone": "Asia/Tokyo"}),
        ("calculate 17*23", "calc__evaluate", {"expression": "17*23"}),
        (
            "remember that the cat is called Tom",
            "notes__write",
            {"key": "cat", "value": "the cat is called Tom"},
        ),
        ("forget the cat", "notes__delete", {"key": "cat"}),
        ("fetch https://example.com/a please", "http__get", {"url": "https://example.com/a"}),
        ("run python: print(2 + 2)", "code__python", {"code": "print(2 + 2)"}),
        ("run shell: ls -l", "code__shell", {"command": "ls -l"}),
    ],
)
async def test_demo_calls_offered_tools(text, tool, arguments):
    import json

    offered = [_tool(tool, **{key: {"type": "string"} for key in arguments})]
    result = await stream_chat(
        config=DEMO, messages=[{"role": "user", "content": text}], tools=offered
    )
    [call] = result.tool_calls
    assert call["function"]["name"] == tool
    assert json.loads(call["function"]["arguments"]) == arguments
    assert result.finish_reason == "tool_calls"


async def test_demo_does_not_call_tools_not_offered():
    result = await stream_chat(
        config=DEMO,
        messages=[{"role": "user", "content": "calculate 17*23"}],
        tools=[_tool("time__now", timezone={"type": "string"})],
    )
    assert result.tool_calls == []
    assert result.content


async def test_demo_answers_from_tool_results():
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "calc__evaluate", "arguments": '{"expression": "17*23"}'},
    }
    history = [
        {"role": "user", "content": "calculate 17*23"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ]
    ok = await stream_chat(
        config=DEMO,
        messages=[*history, {"role": "tool", "tool_call_id": "call_1", "content": "391"}],
    )
    assert ok.content == "Done — the tool said: 391"
    denied = await stream_chat(
        config=DEMO,
        messages=[
            *history,
            {
                "role": "tool",
                "tool_call_id": "call_1",
                "content": '{"status": "denied", "reason": "not during the audit"}',
            },
        ],
    )
    assert "denied" in denied.content
    assert "not during the audit" in denied.content


def test_preload_imports_what_a_first_call_would():
    """In a fresh process: after gateway_preload the demo provider is registered and
    the OpenAI SDK's chat resources (imported lazily by a client's first call, ~1 s
    of a worker's GIL) are loaded, so a worker's first reply does not wait for them."""
    code = (
        "import sys\n"
        "assert 'openai.resources.chat' not in sys.modules\n"
        "from conversations.gateway import gateway_preload\n"
        "gateway_preload()\n"
        "import litellm\n"
        "print('openai.resources.chat' in sys.modules,\n"
        "      any(p['provider'] == 'demo' for p in litellm.custom_provider_map))\n"
    )
    assert fresh_process(code).split() == ["True", "True"]


def test_a_first_plain_call_after_preload_imports_nothing(llmock):
    """In a fresh process: litellm's first completion imports its call path
    (~150 ms of a worker's first reply); after gateway_preload, which walks it
    with a call litellm answers itself, the first real call imports nothing."""
    llmock.reply("Hello there")
    code = (
        "import asyncio, sys\n"
        "from conversations.gateway import gateway_preload\n"
        "if os.environ.get('PRELOAD'):\n"
        "    gateway_preload()\n"
        "import litellm\n"
        "before = set(sys.modules)\n"
        "async def call():\n"
        "    response = await litellm.acompletion(model='openai/x', api_key='k',\n"
        "        api_base=os.environ['LLMOCK_BASE'], stream=True, max_retries=0,\n"
        "        num_retries=0, messages=[{'role': 'user', 'content': 'hi'}])\n"
        "    async for chunk in response:\n"
        "        pass\n"
        "asyncio.run(call())\n"
        "print(len(set(sys.modules) - before))\n"
    )

    def imported(**extra: str) -> int:
        return int(fresh_process(code, LLMOCK_BASE=llmock.base_url("openai"), **extra).split()[-1])

    assert imported() > 0  # without the preload, the first call imports its path
    assert imported(PRELOAD="1") == 0


def test_the_first_context_fit_after_preload_loads_no_tokenizer():
    """In a fresh process: the first token count loads tiktoken's encoding
    (0.1-0.3 s of a worker's first reply); gateway_preload loads it instead."""
    code = (
        "import tiktoken.load\n"
        "loads = []\n"
        "original = tiktoken.load.load_tiktoken_bpe\n"
        "def counted(*args, **kwargs):\n"
        "    loads.append(args[0] if args else kwargs)\n"
        "    return original(*args, **kwargs)\n"
        "tiktoken.load.load_tiktoken_bpe = counted\n"
        "from conversations.gateway import gateway_preload\n"
        "from conversations.context import token_count\n"
        "if os.environ.get('PRELOAD'):\n"
        "    gateway_preload()\n"
        "before = len(loads)\n"
        "token_count(model='openai/bench', message={'role': 'user', 'content': 'hello'})\n"
        "print(before, len(loads) - before)\n"
    )

    assert fresh_process(code).split() == ["0", "1"]  # without the preload, the count loads it
    assert fresh_process(code, PRELOAD="1").split() == ["1", "0"]


def test_a_first_call_with_tools_imports_no_package_after_preload(llmock):
    """In a fresh process: litellm's first call with tools imports its MCP gateway
    (FastAPI, mcp, httpx2…), and a failed one FastAPI's exceptions. After
    gateway_preload neither imports those, so a run step never imports them while
    another thread (an MCP check) imports the same packages: that failed a
    worker's first reply with "partially initialized module 'httpx2'"."""
    llmock.reply("Hello there")
    code = (
        "import asyncio, sys\n"
        "from conversations.gateway import gateway_preload\n"
        "gateway_preload()\n"
        "import litellm\n"
        "before = set(sys.modules)\n"
        "tool = {'type': 'function', 'function': {'name': 'f', 'description': 'd',\n"
        "        'parameters': {'type': 'object', 'properties': {}}}}\n"
        "async def call(base):\n"
        "    try:\n"
        "        response = await litellm.acompletion(model='openai/x', api_key='k',\n"
        "            api_base=base, stream=True, max_retries=0, num_retries=0,\n"
        "            messages=[{'role': 'user', 'content': 'hi'}], tools=[tool])\n"
        "        async for chunk in response:\n"
        "            pass\n"
        "        print('answered', base)\n"
        "    except Exception as error:\n"
        "        print('failed', type(error).__name__, str(error)[:300].replace(chr(10), ' '))\n"
        "asyncio.run(call(os.environ['LLMOCK_BASE']))\n"
        "asyncio.run(call('http://127.0.0.1:9/v1'))\n"
        "print('new', *sorted({m.split('.')[0] for m in set(sys.modules) - before}))\n"
    )
    stdout = fresh_process(code, LLMOCK_BASE=llmock.base_url("openai"))
    lines = dict(line.split(" ", 1) for line in stdout.splitlines() if " " in line)
    assert "answered" in lines, stdout
    assert "connect" in lines["failed"].lower(), lines  # port 9 refuses: the call went out
    new = set(lines.get("new", "").split())
    assert not new & {"mcp", "httpx2", "fastapi", "starlette", "uvicorn"}, new
