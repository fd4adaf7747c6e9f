"""Where uploads are kept: the file system by default, an S3 bucket with
``TOLLGATE_STORAGE=s3`` (django-storages, Django's ``STORAGES``), and ingestion and
serving that reach files only through the storage API, whatever the backend."""

from __future__ import annotations

import pytest

from knowledge.models import Document
from knowledge.selectors import chunks_search
from tests.test_settings import run_manage

#: Prints the default storage's class and the options that matter (no network: an
#: S3Storage makes no request until a file is read or written).
SHOW = (
    "from django.core.files.storage import storages; s = storages['default']; "
    "print(type(s).__module__ + '.' + type(s).__name__, getattr(s, 'bucket_name', ''), "
    "getattr(s, 'endpoint_url', ''), getattr(s, 'file_overwrite', ''))"
)


def shown(env: dict[str, str]) -> list[str]:
    result = run_manage("shell", "--no-imports", "-c", SHOW, env={"DEBUG": "True", **env})
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.parametrize("value", ["", "filesystem"])
def test_the_file_system_is_the_default_storage(value):
    assert shown({"TOLLGATE_STORAGE": value})[0] == (
        "django.core.files.storage.filesystem.FileSystemStorage"
    )


def test_tollgate_storage_s3_selects_django_storages_s3_with_the_aws_settings():
    env = {
        "TOLLGATE_STORAGE": "s3",
        "AWS_STORAGE_BUCKET_NAME": "tollgate-uploads",
        "AWS_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
    }
    assert shown(env) == [
        "storages.backends.s3.S3Storage",
        "tollgate-uploads",
        "http://127.0.0.1:9000",
        "False",  # a second upload of one name never overwrites the first's file
    ]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TOLLGATE_STORAGE": "ftp"}, "TOLLGATE_STORAGE is 'ftp'; it must be"),
        ({"TOLLGATE_STORAGE": "s3"}, "AWS_STORAGE_BUCKET_NAME"),
    ],
)
def test_a_bad_storage_setting_refuses_to_start(env, message):
    result = run_manage("check", env={"DEBUG": "True", **env})
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.django_db
def test_ingestion_and_serving_go_through_the_storage_api(user, client, ingest, settings, _media):
    # A storage with no file system behind it: any use of a path would fail.
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "django.core.files.storage.InMemoryStorage"},
    }
    document = ingest(user, "notes.md", b"## Harbour\n\nFerries leave the harbour every hour.")
    assert document.status == Document.Status.READY, document.error
    assert not _media.exists()  # nothing was written to MEDIA_ROOT
    (hit,) = chunks_search(user=user, query="ferries", limit=1)
    assert hit.chunk.document == document
    client.force_login(user)
    response = client.get(f"/knowledge/documents/{document.pk}/file")
    assert b"".join(response.streaming_content).startswith(b"## Harbour")
