"""Downloads of files the code tools left in a conversation's workspace."""

from __future__ import annotations

from pathlib import PurePosixPath

from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest
from django.views.decorators.http import require_GET

from tools.sandbox import SandboxError, workspace_file_open
from tools.selectors import workspace_owned_by


@login_required
@require_GET
def workspace_file_download(
    request: HttpRequest, conversation_id: int, relpath: str
) -> FileResponse:
    """Send one workspace file as an attachment to the conversation's owner.

    404 for anyone else, for a path that leaves the workspace (``..``, absolute
    paths, symbolic links) and for a missing file: nothing tells a stranger
    whether the file exists.
    """
    if not workspace_owned_by(user=request.user, conversation_id=conversation_id):
        raise Http404("No such file.")
    try:
        handle = workspace_file_open(conversation_id=conversation_id, relpath=relpath)
    except (SandboxError, OSError, ValueError) as exc:
        raise Http404("No such file.") from exc
    return FileResponse(handle, as_attachment=True, filename=PurePosixPath(relpath).name)
