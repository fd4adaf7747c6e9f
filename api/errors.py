"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Every refusal of the API is an :class:`ApiError` (status, type, code, param, and
headers such as ``Retry-After``), answered by :func:`error_response`; the
handlers installed by :func:`errors_install` turn django-ninja's own refusals
(a body that does not validate, no key) and anything unexpected into the same
shape. Status codes:

- 401 ``invalid_request_error``: no key, an unknown, revoked or expired key;
- 402 ``insufficient_quota``: a budget refused the run's model call (or the model
  has no known price while a dollar budget limits the user); a retry would be
  refused again until the budget resets, so ``x-should-retry: false``;
- 403 ``permission_error``: the key lacks the scope, or the user may not decide
  the approval;
- 404 ``invalid_request_error``: no such model, conversation or approval (or not
  the user's: the same answer);
- 409 ``conflict_error``: the state does not allow it (a reply still being
  written, an approval already decided, arguments that changed);
- 422 ``invalid_request_error``: a body that does not validate, client-supplied
  ``tools``, edited arguments the tool's schema refuses;
- 429 ``rate_limit_error``: a rate limit refused the run's model call, with
  ``Retry-After`` (seconds);
- 400 ``invalid_request_error``: a guardrail blocked the message, or the
  conversation no longer fits the model's context;
- 502 ``upstream_error``, 500 ``server_error``: the provider or the server failed.

A response about a run that was made (and failed) says ``x-should-retry:
false`` unless waiting helps (429): the OpenAI clients would otherwise send the
message again, making another run.
"""

from __future__ import annotations

import logging
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from project.inbound import InboundError

logger = logging.getLogger(__name__)

#: OpenAI's error ``type`` for each status this API answers.
TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
}


class ApiError(Exception):
    """A refusal of the API: answered with ``status`` and OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}
        #: Added beside ``error`` (a failed run's ``tollgate_conversation_id``…).
        self.extra: dict[str, Any] = {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": TYPES.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            },
            **self.extra,
        }


def error_response(error: ApiError) -> HttpResponse:
    response = JsonResponse(error.body(), status=error.status)
    for name, value in error.headers.items():
        response[name] = value
    return response


def _validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    problems = []
    param = None
    for item in exc.errors:
        # ninja's location starts with where the value came from: body, query, path.
        where = [str(part) for part in item.get("loc", ())[1:]]
        if where and where[0] in ("body", "payload"):
            where = where[1:]
        field = ".".join(where)
        param = param or field or None
        message = str(item.get("msg", "is not valid")).removeprefix("Value error, ")
        problems.append(f"{field}: {message}" if field else message)
    message = "Invalid request: " + "; ".join(problems[:10])
    return error_response(ApiError(422, message[:2000], code="invalid_request", param=param))


def _authentication_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    message = (
        "You didn't provide an API key. Send it in the Authorization header: "
        "`Authorization: Bearer YOUR_KEY` (make one on your Tollgate settings page)."
    )
    return error_response(ApiError(401, message, code="missing_api_key"))


def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    message = str(exc.message)
    if isinstance(exc.__cause__, InboundError | UnicodeDecodeError):
        # The body did not parse (``api.views.StrictParser``): say why.
        why = str(exc.__cause__) if isinstance(exc.__cause__, InboundError) else "not UTF-8"
        message = f"The body cannot be read: {why}"
    return error_response(ApiError(exc.status_code, message[:2000], code="invalid_body"))


def _not_found(request: HttpRequest, exc: Exception) -> HttpResponse:
    return error_response(ApiError(404, "Not found.", code="not_found"))


def _api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
    return error_response(exc)


def _unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
    logger.exception("API request %s %s failed", request.method, request.path)
    message = "The server had an error while processing your request. Try again."
    return error_response(ApiError(500, message, code="server_error"))


def errors_install(api: NinjaAPI) -> None:
    """Answer every refusal of ``api`` in OpenAI's error shape (module docstring)."""
    handlers: tuple[tuple[type[Exception], Any], ...] = (
        (ApiError, _api_error),
        (ValidationError, _validation_error),
        (AuthenticationError, _authentication_error),
        (HttpError, _http_error),
        (Http404, _not_found),
        (Exception, _unexpected),
    )
    for kind, handler in handlers:
        api.add_exception_handler(kind, handler)
