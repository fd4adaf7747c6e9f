"""Template filters for MCP tool results (``{% load mcp_tags %}``)."""

from __future__ import annotations

import logging
from typing import Any

from django import template
from django.utils.safestring import SafeString, mark_safe

from tools.mcp import MCPCallResult, result_to_html

register = template.Library()
logger = logging.getLogger(__name__)


@register.filter
def mcp_result_html(data: Any) -> SafeString:
    """Safe HTML of a stored MCP result (``MCPCallResult.to_dict()``): text, images,
    links, resources, structured content; every server string escaped
    (``tools.mcp.render.result_to_html``). Unreadable data renders as nothing."""
    if not isinstance(data, dict):
        return mark_safe("")
    try:
        html = result_to_html(MCPCallResult.from_dict(data))
    except Exception:
        logger.warning("stored MCP result could not be rendered", exc_info=True)
        return mark_safe("")
    return mark_safe(html)  # noqa: S308 - result_to_html escapes every server string
