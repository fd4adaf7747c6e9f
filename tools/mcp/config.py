"""How to reach one MCP server: a plain, frozen description (no Django model).

Secrets never live in the config: ``env`` and ``headers`` map a name to the
*name of an environment variable* that holds the value, read at connect time
in the process that connects. The lead's ``MCPServer`` model converts itself
into an ``MCPServerConfig`` with the same fields.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Literal, cast

from tools.mcp.errors import MCPConfigError

Transport = Literal["stdio", "http"]

# A tool name is `<prefix>.<tool>`; the prefix must be safe in provider tool names
# (OpenAI allows ^[a-zA-Z0-9_-]{1,64}$ for function names; the registry maps the dot).
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, kw_only=True)
class MCPServerConfig:
    """One MCP server's connection settings.

    Attributes:
        name: unique server name; the process pool is keyed by it.
        transport: ``"stdio"`` (spawn ``command`` with ``args``) or ``"http"``
            (Streamable HTTP at ``url``).
        command, args: the executable and its arguments (stdio only).
        env: extra environment for the subprocess, ``{VAR_IN_CHILD: NAME_OF_OUR_ENV_VAR}``;
            the value is read from ``os.environ[NAME_OF_OUR_ENV_VAR]`` at connect time.
        url: the Streamable HTTP endpoint (http only).
        headers: ``{HEADER_NAME: NAME_OF_OUR_ENV_VAR}``, same indirection as ``env``.
        tool_prefix: tools appear as ``<tool_prefix>.<remote tool name>``; defaults to ``name``.
        trusted: whether the server's tool annotations (hints) are believed. The MCP
            spec says clients MUST treat annotations as untrusted unless they come
            from a trusted server.
        connect_timeout_seconds: bound on spawn + initialise + first tool listing.
        call_timeout_seconds: default bound on one ``tools/call``.
        cwd: working directory of the subprocess (stdio only), default: inherited.
    """

    name: str
    transport: Transport = "stdio"
    command: str = ""
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] | dict[str, str] = field(default_factory=tuple)
    url: str = ""
    headers: tuple[tuple[str, str], ...] | dict[str, str] = field(default_factory=tuple)
    tool_prefix: str = ""
    trusted: bool = False
    connect_timeout_seconds: float = 30.0
    call_timeout_seconds: float = 120.0
    cwd: str | None = None

    def __post_init__(self) -> None:
        # Store mappings as sorted tuples so the config stays hashable and
        # equality-comparable (the pool replaces a connection whose config changed).
        for attr in ("env", "headers"):
            value = getattr(self, attr)
            if isinstance(value, dict):
                object.__setattr__(self, attr, tuple(sorted(value.items())))
            else:
                object.__setattr__(self, attr, tuple(sorted(tuple(p) for p in value)))
        object.__setattr__(self, "args", tuple(self.args))
        if not self.tool_prefix:
            object.__setattr__(self, "tool_prefix", self.name)
        self.validate()

    def validate(self) -> None:
        """Check the fields; raise ``MCPConfigError`` with a clear message otherwise."""
        if not self.name:
            raise MCPConfigError("MCP server name is required.")
        if self.transport not in ("stdio", "http"):
            raise MCPConfigError(f"MCP server {self.name!r}: transport must be 'stdio' or 'http'.")
        if self.transport == "stdio" and not self.command:
            raise MCPConfigError(f"MCP server {self.name!r}: a stdio server needs a command.")
        if self.transport == "http" and not self.url.startswith(("http://", "https://")):
            raise MCPConfigError(f"MCP server {self.name!r}: an http server needs an http(s) URL.")
        if not _PREFIX_RE.match(self.tool_prefix):
            raise MCPConfigError(
                f"MCP server {self.name!r}: tool prefix must be 1-32 letters, digits, '_' or '-'."
            )
        for label, pairs in (("env", self._pairs("env")), ("headers", self._pairs("headers"))):
            for key, var in pairs:
                if not key or not _ENV_NAME_RE.match(var):
                    raise MCPConfigError(
                        f"MCP server {self.name!r}: {label} entry {key!r} must name an "
                        "environment variable (letters, digits, '_')."
                    )
        if self.connect_timeout_seconds <= 0 or self.call_timeout_seconds <= 0:
            raise MCPConfigError(f"MCP server {self.name!r}: timeouts must be positive.")

    def resolved_env(self) -> dict[str, str]:
        """The subprocess's extra environment, values read from this process's environment.

        Raises ``MCPConfigError`` naming the missing variable (never its value).
        """
        return _resolve(self.name, "env", self._pairs("env"))

    def resolved_headers(self) -> dict[str, str]:
        """The HTTP headers, values read from this process's environment (see ``resolved_env``)."""
        return _resolve(self.name, "headers", self._pairs("headers"))

    def _pairs(self, attr: str) -> tuple[tuple[str, str], ...]:
        # __post_init__ normalised the mapping to sorted (name, variable) pairs.
        return cast("tuple[tuple[str, str], ...]", getattr(self, attr))


def _resolve(server: str, label: str, pairs: tuple[tuple[str, str], ...]) -> dict[str, str]:
    resolved: dict[str, str] = {}
    for key, var in pairs:
        value = os.environ.get(var)
        if value is None:
            raise MCPConfigError(
                f"MCP server {server!r}: {label} {key!r} refers to environment variable "
                f"{var!r}, which is not set."
            )
        resolved[key] = value
    return resolved
