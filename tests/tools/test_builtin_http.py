"""http.get against a real HTTP server started on 127.0.0.1 by the test."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tools.models import HttpAllowedHost, Tool
from tools.registry import ToolError, registry

from .conftest import call

pytestmark = pytest.mark.django_db


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        routes = {
            "/hello": (200, "text/plain; charset=utf-8", "hello from the test server"),
            "/big": (200, "text/plain", "x" * 5000),
            "/binary": (200, "application/octet-stream", "\x00\x01"),
        }
        if self.path in routes:
            status, ctype, body = routes[self.path]
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        targets = {
            "/redirect-in": "/hello",
            "/redirect-out": "http://not-allowed.example/",
            "/redirect-scheme": "file:///etc/passwd",
            "/loop": "/loop",
        }
        if self.path in targets:
            self.send_response(302)
            self.send_header("Location", targets[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _url(server: ThreadingHTTPServer, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def test_fetches_an_allowlisted_address(server, settings, user):
    settings.TOLLGATE_HTTP_ALLOWLIST = ["127.0.0.1"]
    result = call("http.get", user_id=user.pk, url=_url(server, "/hello"))
    assert result.startswith("HTTP 200 OK\n")
    assert "hello from the test server" in result
    assert server.requests == ["/hello"]


def test_admin_allowlist_rows_count_too(server, settings, user):
    settings.TOLLGATE_HTTP_ALLOWLIST = []
    HttpAllowedHost.objects.create(host="127.0.0.0/8")
    assert "hello" in call("http.get", user_id=user.pk, url=_url(server, "/hello"))


def test_host_not_on_the_allowlist_is_refused_before_any_request(server, settings, user):
    settings.TOLLGATE_HTTP_ALLOWLIST = ["example.com"]
    with pytest.raises(ToolError, match="not on the administrator's allowlist"):
        call("http.get", user_id=user.pk, url=_url(server, "/hello"))
    assert server.requests == []


def test_allowlisted_name_resolving_to_loopback_is_refused(server, settings, user):
    settings.TOLLGATE_HTTP_ALLOWLIST = ["localhost"]
    url = f"http://localhost:{server.server_address[1]}/hello"
    with pytest.raises(ToolError, match="non-public address"):
        call("http.get", user_id=user.pk, url=url)
    assert server.requests == []


def test_redirect_to_another_host_is_refused(server, settings, user):
    settings.TOLLGATE_HTTP_ALLOWLIST = ["127.0.0.1"]
    with pytest.raises(ToolError, match=r"'not-allowed\.example' is not on"):
        call("http.get", user_id=user.pk, url=_url(server, "/redirect-out"))
    assert server.requests == ["/redirect-out"]


def test_redirect_to_another_scheme_is_refused(server, settings, user):
    settings.TOLLGATE_HTTP_ALLOWLIST = ["127.0.0.1"]
    with pytest.raises(ToolError, match="only http and https"):
        call("http.get", user_id=user.pk, url=_url(server, "/redirect-scheme"))


def test_redirect_on_the_same_host_is_followed(server, settings, user):
    settings.TOLLGATE_HTTP_ALLOWLIST = ["127.0.0.1"]
    result = call("http.get", user_id=user.pk, url=_url(server, "/redirect-in"))
    assert "hello from the test server" in result
    assert server.requests == ["/redirect-in", "/hello"]


def test_redirect_loops_stop(server, settings, user):
    settings.TOLLGATE_HTTP_ALLOWLIST = ["127.0.0.1"]
    with pytest.raises(ToolError, match="more than 5 redirects"):
        call("http.get", user_id=user.pk, url=_url(server, "/loop"))
    assert len(server.requests) == 6


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/x",
        "gopher://127.0.0.1/",
    ],
)
def test_other_schemes_are_refused(settings, user, url):
    settings.TOLLGATE_HTTP_ALLOWLIST = ["127.0.0.1"]
    with pytest.raises(ToolError, match="only http and https"):
        call("http.get", user_id=user.pk, url=url)


def test_credentials_in_url_are_refused(server, settings, user):
    settings.TOLLGATE_HTTP_ALLOWLIST = ["127.0.0.1"]
    url = f"http://u:p@127.0.0.1:{server.server_address[1]}/hello"
    with pytest.raises(ToolError, match="credentials"):
        call("http.get", user_id=user.pk, url=url)
    assert server.requests == []


def test_body_is_cut_at_the_byte_limit(server, settings, user):
    settings.TOLLGATE_HTTP_ALLOWLIST = ["127.0.0.1"]
    settings.TOLLGATE_HTTP_MAX_BYTES = 1000
    result = call("http.get", user_id=user.pk, url=_url(server, "/big"))
    assert result.endswith("x" * 1000 + "\n[body cut at 1000 bytes]")
    assert "x" * 1001 not in result


def test_binary_bodies_are_described_not_shown(server, settings, user):
    settings.TOLLGATE_HTTP_ALLOWLIST = ["127.0.0.1"]
    result = call("http.get", user_id=user.pk, url=_url(server, "/binary"))
    assert "[binary content, 2 bytes; not shown]" in result


def test_http_get_is_disabled_by_default_and_open_world():
    spec = registry.get("http.get")
    assert spec.open_world and spec.read_only and not spec.enabled_by_default
    assert Tool.objects.get(name="http.get").enabled is False
