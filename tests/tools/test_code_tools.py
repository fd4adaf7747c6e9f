"""code.python / code.shell through the registry, and workspace downloads."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync

from tools.models import Tool, ToolInvocation
from tools.registry import registry
from tools.selectors import tools_for_user
from tools.services import invocation_execute, tools_sync

from .conftest import approved_invocation, make_run

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def sandbox_root(settings):
    root = Path(tempfile.mkdtemp(prefix="tollgate-code-tool-test-"))
    root.chmod(0o711)
    settings.TOLLGATE_SANDBOX_ROOT = root
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_code_tools_are_destructive_closed_world_and_never_read_only():
    for name in ("code.python", "code.shell"):
        spec = registry.get(name)
        assert spec is not None
        assert spec.destructive and not spec.read_only and not spec.open_world
        assert spec.parameters["required"] == ["code"]


def test_python_runs_in_the_sandbox_and_returns_output_and_files(run):
    inv = approved_invocation(
        run,
        tool_name="code.python",
        arguments={"code": "print(sum(range(10)))\nopen('out.txt', 'w').write('hi')"},
    )
    done = async_to_sync(invocation_execute)(invocation_id=inv.pk)
    assert done.status == ToolInvocation.Status.SUCCEEDED, done.result
    payload = json.loads(done.result)
    assert payload["stdout"].strip() == "45"
    assert payload["exit_code"] == 0
    assert payload["files"] == [{"name": "out.txt", "size": 2}]


def test_shell_reports_the_exit_code(run):
    inv = approved_invocation(
        run, tool_name="code.shell", arguments={"code": "echo no >&2; exit 3"}
    )
    done = async_to_sync(invocation_execute)(invocation_id=inv.pk)
    payload = json.loads(done.result)
    assert payload["exit_code"] == 3
    assert payload["stderr"].strip() == "no"


def test_missing_bubblewrap_disables_the_tools_with_a_reason(settings, user):
    tools_sync()
    assert {"code.python", "code.shell"} <= {s.name for s in tools_for_user(user=user)}
    settings.TOLLGATE_SANDBOX_BWRAP = "/nonexistent/bwrap"
    tools_sync()
    row = Tool.objects.get(name="code.python")
    assert "bwrap" in row.unavailable_reason
    assert "code.python" not in {s.name for s in tools_for_user(user=user)}
    settings.TOLLGATE_SANDBOX_BWRAP = "/usr/bin/bwrap"
    tools_sync()
    assert Tool.objects.get(name="code.python").unavailable_reason == ""


def test_workspace_file_download_only_for_the_owner(client, user, other_user, password):
    run = make_run(user)
    inv = approved_invocation(
        run, tool_name="code.python", arguments={"code": "open('r.csv','w').write('a,b')"}
    )
    async_to_sync(invocation_execute)(invocation_id=inv.pk)
    url = f"/tools/workspace/{run.conversation_id}/r.csv"

    client.force_login(user)
    response = client.get(url)
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"a,b"
    assert "attachment" in response["Content-Disposition"]
    assert client.get(f"/tools/workspace/{run.conversation_id}/../../etc/passwd").status_code == 404
    assert client.get(f"/tools/workspace/{run.conversation_id}/missing.txt").status_code == 404

    client.force_login(other_user)
    assert client.get(url).status_code == 404


def test_symlink_out_of_the_workspace_is_not_served(client, user):
    run = make_run(user)
    inv = approved_invocation(
        run, tool_name="code.shell", arguments={"code": "ln -s /etc/passwd p.txt"}
    )
    async_to_sync(invocation_execute)(invocation_id=inv.pk)
    client.force_login(user)
    assert client.get(f"/tools/workspace/{run.conversation_id}/p.txt").status_code == 404
