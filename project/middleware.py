"""Request middleware of our own (settings ``MIDDLEWARE``)."""

from __future__ import annotations

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.http import HttpRequest, HttpResponse
from django.http.multipartparser import MultiPartParserError
from django.utils.deprecation import MiddlewareMixin
from django.utils.log import log_response


class FormBodyMiddleware(MiddlewareMixin):
    """Read a POST's form body first, and refuse one Django's parser refuses.

    Django refuses a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` or with more
    than ``DATA_UPLOAD_MAX_NUMBER_FIELDS`` fields (or files) with 400 but logs
    it at ERROR with a traceback (``django.security.*``), and a multipart body
    it cannot read as a warning with a traceback, wherever the body is first
    read (the CSRF check). Here, before any other middleware reads it, such a
    body gets 413 (too large) or 400 with a message for people, logged once as
    a warning without a traceback.
    """

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        if request.method != "POST":
            return None
        try:
            request.POST  # noqa: B018 - parsed now, so that a refusal is ours
        except RequestDataTooBig:
            return self._refuse(request, 413, "The form is too large to send.")
        except (TooManyFieldsSent, TooManyFilesSent):
            return self._refuse(request, 400, "The form has too many fields.")
        except MultiPartParserError:
            return self._refuse(request, 400, "The form could not be read.")
        return None

    @staticmethod
    def _refuse(request: HttpRequest, status: int, message: str) -> HttpResponse:
        response = HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")
        log_response("%s: %s", message, request.path, response=response, request=request)
        return response
