"""API keys: made on the settings page (shown once, stored hashed), checked in
constant time, scoped, expired, revoked by their owner or an admin; every create,
refused use and revoke audited."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.models import ApiKey
from accounts.services import ApiKeyError, api_key_create, api_key_revoke
from audit.models import AuditEvent
from tests.api.conftest import bearer, key_for

pytestmark = pytest.mark.django_db(transaction=True)

KEY_SHOWN = re.compile(r'<code id="new-key-value">(tg_[A-Za-z0-9_-]{43})</code>')


def _audit(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("sequence"))


def test_a_key_made_on_the_settings_page_is_shown_once_and_stored_hashed(user_client, user):
    page = user_client.post(
        reverse("accounts:api_keys"),
        {"name": "  CI   bot ", "scopes": ["chat", "read"], "expires_in_days": "30"},
    )
    assert page.status_code == 200
    assert "no-store" in page["Cache-Control"] or "no-cache" in page["Cache-Control"]
    key = KEY_SHOWN.search(page.content.decode()).group(1)
    row = ApiKey.objects.get(user=user)
    assert (row.name, row.scopes, row.prefix) == ("CI bot", ["chat", "read"], key[:11])
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key not in str(ApiKey.objects.values_list().get())  # nothing stores the key itself
    assert timedelta(days=29) < row.expires_at - timezone.now() <= timedelta(days=30)
    # Shown once: the list names it by its prefix only.
    listed = user_client.get(reverse("accounts:api_keys")).content.decode()
    assert key not in listed and f"{row.prefix}…" in listed
    [created] = _audit("api_key.created")
    assert (created.actor_id, created.target_id) == (user.pk, str(row.pk))
    assert key not in str(created.data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "", "scopes": ["chat"]}, "Name"),
        ({"name": "x", "scopes": []}, "Choose at least one scope."),
        ({"name": "x", "scopes": ["admin"]}, "Select a valid choice"),
        ({"name": "x", "scopes": ["chat"], "expires_in_days": "2"}, "Select a valid choice"),
        ({"name": "x\x00", "scopes": ["chat"]}, "Null characters are not allowed."),
    ],
)
def test_a_bad_key_form_is_refused_and_makes_nothing(user_client, data, message):
    page = user_client.post(reverse("accounts:api_keys"), data)
    assert page.status_code == 400
    assert message in page.content.decode()
    assert not ApiKey.objects.exists()


def test_the_service_refuses_bad_keys(user):
    with pytest.raises(ApiKeyError, match="future"):
        api_key_create(user=user, name="x", scopes=["chat"], expires_at=timezone.now())
    with pytest.raises(ApiKeyError, match="Unknown scope"):
        api_key_create(user=user, name="x", scopes=["chat", "root"])
    with pytest.raises(ApiKeyError, match="too long"):
        api_key_create(user=user, name="x" * 101, scopes=["chat"])


def test_scopes_decide_what_a_key_may_do(user, demo_model):
    chat = bearer(key_for(user, "chat"))
    read = bearer(key_for(user, "read"))
    approvals = bearer(key_for(user, "approvals"))
    assert chat.get("/v1/models").status_code == 200
    assert read.get("/v1/models").status_code == 200
    assert read.get("/v1/approvals").status_code == 200
    assert approvals.get("/v1/approvals").status_code == 200
    refused = [
        approvals.get("/v1/models"),
        chat.get("/v1/approvals"),
        read.post("/v1/approvals/1/deny", {"reason": "no"}, content_type="application/json"),
        read.post(
            "/v1/chat/completions",
            {"model": demo_model.name, "messages": [{"role": "user", "content": "hi"}]},
            content_type="application/json",
        ),
    ]
    for answer in refused:
        assert answer.status_code == 403
        error = answer.json()["error"]
        assert (error["type"], error["code"]) == ("permission_error", "insufficient_scope")
    assert [e.data["reason"] for e in _audit("api_key.denied")] == ["scope"] * 4


def test_expired_revoked_wrong_and_unknown_keys_are_refused(user, other_user, admin_user):
    expired_key = key_for(user, "chat")
    ApiKey.objects.filter(prefix=expired_key[:11]).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    revoked_key = key_for(user, "chat")
    row = ApiKey.objects.get(prefix=revoked_key[:11])
    # Another user cannot revoke it; its owner can, once.
    with pytest.raises(ApiKeyError):
        api_key_revoke(actor=other_user, key_id=row.pk)
    assert api_key_revoke(actor=user, key_id=row.pk)[1] is True
    assert api_key_revoke(actor=user, key_id=row.pk)[1] is False
    good = key_for(user, "chat")
    wrong_secret = good[:11] + ("A" if good[11] != "A" else "B") + good[12:]
    cases = [
        (expired_key, "key_expired"),
        (revoked_key, "key_revoked"),
        (wrong_secret, "invalid_api_key"),
        ("tg_" + "x" * 43, "invalid_api_key"),  # no such prefix: not audited
        ("sk-not-ours", "invalid_api_key"),
    ]
    for key, code in cases:
        answer = bearer(key).get("/v1/models")
        assert answer.status_code == 401, key
        assert answer.json()["error"]["code"] == code
    missing = bearer("").get("/v1/models")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] in ("missing_api_key", "invalid_api_key")
    reasons = [e.data["reason"] for e in _audit("api_key.denied")]
    assert reasons == ["expired", "revoked", "wrong_secret"]
    assert len(_audit("api_key.revoked")) == 1
    assert bearer(good).get("/v1/models").status_code == 200


def test_a_deactivated_users_keys_stop_working(user):
    key = key_for(user, "chat")
    user.is_active = False
    user.save()
    assert bearer(key).get("/v1/models").status_code == 401
    assert [e.data["reason"] for e in _audit("api_key.denied")] == ["user_inactive"]


def test_revoking_from_the_settings_page_and_from_admin(
    user_client, user, other_user, client, admin_user
):
    mine = key_for(user, "chat")
    theirs = key_for(other_user, "chat")
    mine_id = ApiKey.objects.get(prefix=mine[:11]).pk
    theirs_id = ApiKey.objects.get(prefix=theirs[:11]).pk
    # Another user's key is not found from the settings page.
    assert user_client.post(reverse("accounts:api_key_revoke", args=[theirs_id])).status_code == 404
    answer = user_client.post(reverse("accounts:api_key_revoke", args=[mine_id]))
    assert answer.status_code == 302
    assert bearer(mine).get("/v1/models").status_code == 401
    # An admin sees every key (never its secret) and revokes with the action.
    client.force_login(admin_user)
    listing = client.get("/admin/accounts/apikey/").content.decode()
    assert ApiKey.objects.get(pk=theirs_id).prefix in listing
    assert ApiKey.objects.get(pk=theirs_id).key_hash not in listing
    answer = client.post(
        "/admin/accounts/apikey/",
        {"action": "revoke", "_selected_action": [theirs_id]},
    )
    assert answer.status_code == 302
    assert bearer(theirs).get("/v1/models").status_code == 401
    revoked = _audit("api_key.revoked")
    assert [(e.actor_id, e.data["owner_id"]) for e in revoked] == [
        (user.pk, user.pk),
        (admin_user.pk, other_user.pk),
    ]
