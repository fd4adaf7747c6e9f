"""The Knowledge pages over HTTP: upload (and its refusals), status, retry, delete, the
document's page and file; nobody reads another user's documents unless a collection
of them is shared with a group they are in."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from knowledge.models import Document
from tests.factories import CollectionFactory, GroupFactory

from .conftest import pdf_bytes

pytestmark = pytest.mark.django_db


def test_upload_stores_a_pending_document(user_client, user):
    response = user_client.post(
        reverse("knowledge:upload"), {"file": SimpleUploadedFile("notes.md", b"# Hi\n\ntext")}
    )
    assert response.status_code == 302
    document = Document.objects.get(owner=user)
    assert (document.name, document.content_type, document.status) == (
        "notes.md",
        "text/markdown",
        "pending",
    )
    page = user_client.get(reverse("knowledge:index")).content.decode()
    assert f'id="document-{document.pk}"' in page
    assert "every 1s" in page  # polled while it is read


def test_refused_uploads_say_why_and_store_nothing(user_client, settings, _media):
    settings.TOLLGATE_KNOWLEDGE_MAX_FILE_BYTES = 10
    response = user_client.post(
        reverse("knowledge:upload"), {"file": SimpleUploadedFile("big.txt", b"x" * 11)}
    )
    assert response.status_code == 413
    assert "the limit per file is" in response.content.decode()
    settings.TOLLGATE_KNOWLEDGE_MAX_FILE_BYTES = 10_000
    response = user_client.post(
        reverse("knowledge:upload"), {"file": SimpleUploadedFile("x.bin", bytes(range(256)))}
    )
    assert response.status_code == 400
    assert "cannot be read" in response.content.decode()
    response = user_client.post(reverse("knowledge:upload"), {})
    assert response.status_code == 400
    assert not Document.objects.exists()
    assert not list(Path(_media).rglob("*.*"))


def test_status_fragment_retry_and_delete(
    user_client, user, ingest, monkeypatch, django_capture_on_commit_callbacks
):
    def broken(data, content_type):
        raise ValueError("no text")

    with monkeypatch.context() as patch:
        patch.setattr("knowledge.services.sections_extract", broken)
        document = ingest(user, "a.txt", b"hello")
    fragment = user_client.get(reverse("knowledge:document-status", args=[document.pk]))
    body = fragment.content.decode()
    assert body.strip().startswith(f'<tr id="document-{document.pk}" data-status="failed"')
    assert "no text" in body and "Retry" in body and "every 1s" not in body
    response = user_client.post(reverse("knowledge:document-retry", args=[document.pk]))
    assert response.status_code == 302
    document.refresh_from_db()
    assert document.status == "pending"
    again = user_client.post(reverse("knowledge:document-retry", args=[document.pk]))
    assert again.status_code == 409
    path = Path(document.file.path)
    assert path.exists()
    with django_capture_on_commit_callbacks(execute=True):
        response = user_client.post(reverse("knowledge:document-delete", args=[document.pk]))
    assert response.status_code == 302
    assert not Document.objects.exists()
    assert not path.exists()  # the file goes once the delete is committed


def test_document_page_and_file(user_client, user, ingest):
    document = ingest(user, "guide.pdf", pdf_bytes(["alpha page", "beta page"]))
    chunk = document.chunks.get(page=2)
    page = user_client.get(reverse("knowledge:document", args=[document.pk]), {"chunk": chunk.pk})
    body = page.content.decode()
    assert page.status_code == 200
    assert 'id="page=2"' in body and f'id="chunk-{chunk.pk}" class="knowledge-chunk cited"' in body
    file = user_client.get(reverse("knowledge:document-file", args=[document.pk]))
    assert file["Content-Type"] == "application/pdf"
    assert b"".join(file.streaming_content).startswith(b"%PDF")


def test_html_is_downloaded_never_rendered(user_client, user, ingest):
    document = ingest(
        user, "x.html", b"<html><body><p>hi</p><script>alert(1)</script></body></html>"
    )
    file = user_client.get(reverse("knowledge:document-file", args=[document.pk]))
    assert file["Content-Type"] == "application/octet-stream"
    assert file["Content-Disposition"].startswith("attachment")
    assert "sandbox" in file["Content-Security-Policy"]


def test_another_users_documents_answer_404(client, user, other_user, ingest):
    document = ingest(other_user, "theirs.txt", b"their secret text")
    client.force_login(user)
    for name in ("knowledge:document", "knowledge:document-file", "knowledge:document-status"):
        assert client.get(reverse(name, args=[document.pk])).status_code == 404
    for name in ("knowledge:document-retry", "knowledge:document-delete"):
        assert client.post(reverse(name, args=[document.pk])).status_code == 404
    assert "theirs.txt" not in client.get(reverse("knowledge:index")).content.decode()
    theirs = CollectionFactory(owner=other_user)
    response = client.post(
        reverse("knowledge:upload"),
        {"file": SimpleUploadedFile("a.txt", b"hi"), "collection": theirs.pk},
    )
    assert response.status_code == 404
    assert (
        client.post(reverse("knowledge:collection-share", args=[theirs.pk]), {}).status_code == 404
    )
    assert Document.objects.filter(owner=user).count() == 0


def test_a_shared_collection_is_readable_by_group_members_only(client, user, other_user, ingest):
    group = GroupFactory()
    other_user.groups.add(group)
    user.groups.add(group)
    collection = CollectionFactory(owner=other_user, name="Team")
    document = ingest(other_user, "team.txt", b"team text", collection_id=collection.pk)
    client.force_login(user)
    url = reverse("knowledge:document", args=[document.pk])
    assert client.get(url).status_code == 404
    client.force_login(other_user)
    response = client.post(
        reverse("knowledge:collection-share", args=[collection.pk]), {"groups": [group.pk]}
    )
    assert response.status_code == 302
    client.force_login(user)
    assert client.get(url).status_code == 200
    page = client.get(reverse("knowledge:index")).content.decode()
    assert "team.txt" in page and "Team" in page
    # A member reads, but does not delete or retry, another's document.
    assert client.post(reverse("knowledge:document-delete", args=[document.pk])).status_code == 404


def test_sharing_only_with_ones_own_groups(user_client, user):
    collection = CollectionFactory(owner=user)
    stranger_group = GroupFactory()
    response = user_client.post(
        reverse("knowledge:collection-share", args=[collection.pk]), {"groups": [stranger_group.pk]}
    )
    assert response.status_code == 400
    assert not collection.groups.exists()


def test_the_index_page_queries_do_not_grow_with_rows(
    user_client, user, ingest, django_assert_max_num_queries
):
    collection = CollectionFactory(owner=user)
    for number in range(3):
        ingest(user, f"{number}.txt", b"text", collection_id=collection.pk)
    with django_assert_max_num_queries(12) as first:
        user_client.get(reverse("knowledge:index"))
    for number in range(3, 8):
        ingest(user, f"{number}.txt", b"text", collection_id=collection.pk)
        CollectionFactory(owner=user)
    with django_assert_max_num_queries(len(first.captured_queries)):
        user_client.get(reverse("knowledge:index"))


def test_deleting_a_collection_keeps_its_documents(client, user, other_user, ingest):
    collection = CollectionFactory(owner=user)
    document = ingest(user, "a.txt", b"text", collection_id=collection.pk)
    client.force_login(other_user)
    url = reverse("knowledge:collection-delete", args=[collection.pk])
    assert client.post(url).status_code == 404
    client.force_login(user)
    assert client.post(url).status_code == 302
    document.refresh_from_db()
    assert document.collection is None
    assert not type(collection).objects.exists()
