"""``code.python`` and ``code.shell``: run model-written code in the sandbox.

Both are destructive and not open-world (the sandbox has no network), so with no
policy they always ask (approvals' default for non-read-only tools) and can never
be covered by "always allow". The code runs in bubblewrap with the limits of
``tools.sandbox`` in the conversation's persistent workspace; when the sandbox is
not available the call fails with the reason, and nothing runs unsandboxed.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from tools.registry import ToolContext, ToolError, tool
from tools.sandbox import Language, SandboxResult, SandboxUnavailable, run_code, sandbox_available

# Outer bound only: the sandbox enforces its own wall time (settings), and the
# tool timeout must not cut a run short before the sandbox reports it.
CODE_TOOL_TIMEOUT_SECONDS = 600
CODE_MAX_CHARS = 100_000


def sandbox_result_payload(result: SandboxResult) -> dict[str, Any]:
    """The tool result for the model: output, exit code, limit hit, files.

    Returns a JSON-serialisable dict; ``duration_seconds`` in seconds, file
    ``size`` in bytes.
    """
    return {
        "exit_code": result.exit_code,
        "killed_by": result.killed_by,
        "duration_seconds": round(result.duration_seconds, 3),
        "stdout": result.stdout,
        "stderr": result.stderr,
        "files": [{"name": f.name, "size": f.size} for f in result.files],
    }


async def _run(language: Language, code: str, ctx: ToolContext) -> dict[str, Any]:
    if ctx.conversation_id is None:
        raise ToolError("Code runs only inside a conversation (it needs a workspace).")
    try:
        result = await run_code(language=language, code=code, conversation_id=ctx.conversation_id)
    except SandboxUnavailable as exc:
        raise ToolError(f"The code sandbox is not available here: {exc}. Nothing was run.") from exc
    return sandbox_result_payload(result)


@tool(
    name="code.python",
    read_only=False,
    destructive=True,
    idempotent=False,
    open_world=False,
    timeout_seconds=CODE_TOOL_TIMEOUT_SECONDS,
    availability=sandbox_available,
)
async def code_python(
    code: Annotated[
        str, Field(description="Python 3 source to run.", min_length=1, max_length=CODE_MAX_CHARS)
    ],
    ctx: ToolContext,
) -> dict[str, Any]:
    """Run Python 3 code in an isolated sandbox (no network) with the conversation's
    workspace as the working directory; returns stdout, stderr, exit code and files."""
    return await _run("python", code, ctx)


@tool(
    name="code.shell",
    read_only=False,
    destructive=True,
    idempotent=False,
    open_world=False,
    timeout_seconds=CODE_TOOL_TIMEOUT_SECONDS,
    availability=sandbox_available,
)
async def code_shell(
    code: Annotated[
        str, Field(description="A bash script to run.", min_length=1, max_length=CODE_MAX_CHARS)
    ],
    ctx: ToolContext,
) -> dict[str, Any]:
    """Run a bash script in an isolated sandbox (no network) with the conversation's
    workspace as the working directory; returns stdout, stderr, exit code and files."""
    return await _run("shell", code, ctx)
