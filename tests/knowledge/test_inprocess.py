"""The embedded mode's dispatcher: with no Celery, an upload is read in a thread of
the web process once it is committed."""

from __future__ import annotations

import time

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from knowledge.models import Document
from knowledge.services import document_upload
from tests.factories import UserFactory


@pytest.mark.django_db(transaction=True)
def test_an_upload_is_ingested_in_process_after_commit(settings):
    settings.TOLLGATE_DISPATCHER = "inprocess"
    user = UserFactory()
    document = document_upload(
        user=user, upload=SimpleUploadedFile("n.md", b"# Title\n\nThe answer is 42.")
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        document.refresh_from_db()
        if document.status in {Document.Status.READY, Document.Status.FAILED}:
            break
        time.sleep(0.05)
    assert (document.status, document.progress, document.error) == ("ready", 100, "")
    assert document.chunks.get().section == "Title"
