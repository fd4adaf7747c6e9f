"""Search on the embedded mode's SQLite: full text is FTS5's bm25 over the index
migration 0003 makes, kept by triggers. The suite runs on PostgreSQL, so this runs
the project once more, on a fresh SQLite file, in a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.knowledge.test_search import QUESTIONS
from tests.topology import ROOT

SCRIPT = r"""
import json
import time
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from accounts.models import User
from knowledge.models import Chunk, Document
from knowledge.selectors import chunks_rank_words, chunks_search
from knowledge.services import document_ingest, document_upload
from tests.knowledge.test_search import QUESTIONS, handbook_markdown

def ingest(user, name, data):
    # The embedded mode also ingests in a thread of its own: whoever claims the
    # document reads it; wait for it to be read.
    document = document_upload(user=user, upload=SimpleUploadedFile(name, data))
    document_ingest(document_id=document.pk)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        document = Document.objects.get(pk=document.pk)
        if document.status in ("ready", "failed"):
            break
        time.sleep(0.05)
    return document

owner = User.objects.create_user("owner@example.com", "a-long-pass-phrase-42")
other = User.objects.create_user("other@example.com", "a-long-pass-phrase-42")
handbook = ingest(owner, "handbook.md", handbook_markdown())
theirs = ingest(other, "secret.md", b"## Parking\n\nThe secret parking spot is behind the gym.")
mine = Chunk.objects.filter(document=handbook)

def sections(ids):
    return [Chunk.objects.get(pk=pk).section for pk in ids]

result = {
    "vendor": connection.vendor,
    "statuses": [handbook.status, theirs.status],
    "first": [chunks_search(user=owner, query=q, limit=1)[0].chunk.section for q, _ in QUESTIONS],
    "garage": sections(chunks_rank_words(mine, ["underground", "garage"])),
    "owner_finds_secret": [
        h.chunk.document.name for h in chunks_search(user=owner, query="secret gym", limit=20)
    ],
    "nothing": chunks_rank_words(mine, ["zeppelin"]),
}
chunk = mine.get(section="Printing")
chunk.text = "Zeppelin rides leave from the roof."
chunk.save(update_fields=["text"])
result["after_update"] = sections(chunks_rank_words(mine, ["zeppelin"]))
result["old_words_after_update"] = sections(chunks_rank_words(mine, ["cost", "centre"]))
theirs_ids = list(theirs.chunks.values_list("pk", flat=True))
theirs.delete()
result["after_delete"] = chunks_rank_words(Chunk.objects.all(), ["secret"])
result["fts_rows_of_deleted"] = [
    row[0] for row in connection.cursor().execute(
        "SELECT rowid FROM knowledge_chunk_fts WHERE knowledge_chunk_fts MATCH 'secret'"
    ).fetchall()
]
print("RESULT " + json.dumps(result))
"""


def _manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_full_text_on_sqlite_is_fts5_and_follows_every_write(tmp_path):
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")
    }
    env.update(
        TOLLGATE_DATA_DIR=str(tmp_path),
        MEDIA_ROOT=str(tmp_path / "media"),
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        DJANGO_SETTINGS_MODULE="project.settings",
    )
    _manage(env, "migrate", "--noinput")
    out = _manage(env, "shell", "-c", SCRIPT)
    result = json.loads(out.split("RESULT ", 1)[1])
    assert result["vendor"] == "sqlite"
    assert result["statuses"] == ["ready", "ready"]
    assert result["first"] == [section for _, section in QUESTIONS]
    assert result["garage"][0] == "Parking"
    assert "secret.md" not in result["owner_finds_secret"]
    assert result["nothing"] == []
    # the triggers keep the index: an edited chunk is found by its new words only,
    # a deleted one is gone from it
    assert result["after_update"] == ["Printing"]
    assert "Printing" not in result["old_words_after_update"]
    assert result["after_delete"] == [] and result["fts_rows_of_deleted"] == []
