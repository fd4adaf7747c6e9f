"""Settings read from the environment: refusals, the deploy checklist (with README's
production variables), the deployment's names in Redis and its WebSocket origins.

Each case starts a fresh Python process, since settings are read once at import.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from project.deployment import deployment_default, deployment_name, origin_exact

ROOT = Path(__file__).resolve().parent.parent


def run_manage(
    *args: str, env: dict[str, str], inherit: bool = True
) -> subprocess.CompletedProcess[str]:
    """``manage.py *args`` in a fresh process with ``env`` on top of this process's
    environment (without ``SECRET_KEY`` and ``DEBUG``), or with ``inherit=False``
    on top of ``PATH`` and ``HOME`` only."""
    if inherit:
        base = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEBUG"}}
    else:
        base = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    base.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_refuses_to_start_without_secret_key_when_debug_is_off():
    result = run_manage("check", env={"DEBUG": "False"})
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_debug_mode_starts_without_secret_key():
    result = run_manage("check", env={"DEBUG": "True"})
    assert result.returncode == 0, result.stderr


def readme_production_env() -> dict[str, str]:
    """The variables README's production section exports (its ``export`` lines)."""
    section = (ROOT / "README.md").read_text().split("\n## Production topology\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    env: dict[str, str] = {}
    for line in section.splitlines():
        if line.startswith("export "):
            for word in shlex.split(line, comments=True)[1:]:
                name, _, value = word.partition("=")
                env[name] = value
    return env


#: README's production variables, its placeholder secret made a real one.
PRODUCTION_ENV = {
    **readme_production_env(),
    "SECRET_KEY": "p" * 20 + "-Zq8w!Kd2@xVb9#Lm4$Tn7&Rc5*Hy3^Gf6",
}


def test_readme_lists_the_production_variables():
    readme = readme_production_env()
    assert readme["SECRET_KEY"] == "..."
    assert readme["DEBUG"] == "False"
    assert {"DATABASE_URL", "REDIS_URL", "ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS"} <= set(readme)
    example = (ROOT / ".env.example").read_text()
    for name in readme:
        assert re.search(rf"^#? ?{name}=", example, re.MULTILINE), f"{name} not in .env.example"


def test_check_deploy_is_clean_with_exactly_the_readme_production_variables():
    result = run_manage(
        "check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION_ENV, inherit=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_check_deploy_warns_with_debug_on():
    result = run_manage(
        "check", "--deploy", "--fail-level", "WARNING", env={**PRODUCTION_ENV, "DEBUG": "True"}
    )
    assert result.returncode != 0
    assert "security.W018" in result.stdout + result.stderr


# -- the deployment's names in Redis ------------------------------------------------

#: Variables that decide this deployment's names in Redis and the origins it
#: serves; each case sets its own.
DEPLOYMENT_VARIABLES = {
    "SECRET_KEY",
    "DEBUG",
    "DATABASE_URL",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "TOLLGATE_DEPLOYMENT",
    "TOLLGATE_RATELIMIT_KEY_PREFIX",
    "CSRF_TRUSTED_ORIGINS",
    "TOLLGATE_WEBSOCKET_ORIGINS",
}

SETTINGS_SHOWN = (
    "TOLLGATE_DEPLOYMENT",
    "CHANNEL_LAYERS",
    "CACHES",
    "TOLLGATE_RATELIMIT_KEY_PREFIX",
    "CELERY_BROKER_TRANSPORT_OPTIONS",
    "TOLLGATE_WEBSOCKET_ORIGINS",
)


def load_settings(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Load the settings alone in a fresh process with ``env`` for the deployment
    variables; it prints ``SETTINGS_SHOWN`` as JSON."""
    base = {k: v for k, v in os.environ.items() if k not in DEPLOYMENT_VARIABLES}
    base.update(env, DJANGO_SETTINGS_MODULE="project.settings")
    code = (
        "import json\n"
        "from django.conf import settings\n"
        f"print(json.dumps({{name: getattr(settings, name) for name in {SETTINGS_SHOWN!r}}}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
    )


def settings_values(env: dict[str, str]) -> dict:
    result = load_settings(env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def redis_names(values: dict) -> list[str]:
    """The channel layer's, the cache's, the rate limits' and the broker's prefixes."""
    return [
        values["CHANNEL_LAYERS"]["default"]["CONFIG"]["prefix"],
        values["CACHES"]["default"]["KEY_PREFIX"],
        values["TOLLGATE_RATELIMIT_KEY_PREFIX"],
        values["CELERY_BROKER_TRANSPORT_OPTIONS"]["global_keyprefix"],
    ]


SHARED_REDIS = {
    "DEBUG": "False",
    "SECRET_KEY": "production-" + "s" * 50,
    "DATABASE_URL": "postgres://tollgate@db.internal:5432/tollgate",
    "REDIS_URL": "redis://redis.internal:6379/0",
}


def test_every_redis_name_starts_with_the_deployment_name():
    values = settings_values({**SHARED_REDIS, "TOLLGATE_DEPLOYMENT": "staging"})
    assert values["TOLLGATE_DEPLOYMENT"] == "staging"
    assert redis_names(values) == [
        "tollgate.staging.",
        "tollgate.staging.cache",
        "tollgate.staging.rl",
        "tollgate.staging.",
    ]


def test_default_deployment_name_comes_from_the_database_name_and_secret_key():
    production = settings_values(SHARED_REDIS)
    name = production["TOLLGATE_DEPLOYMENT"]
    assert name == deployment_default(
        database_name="tollgate", secret_key=SHARED_REDIS["SECRET_KEY"]
    )
    assert redis_names(production) == [
        f"tollgate.{name}.",
        f"tollgate.{name}.cache",
        f"tollgate.{name}.rl",
        f"tollgate.{name}.",
    ]
    # Staging on the same Redis server, another database number, configured apart.
    staging = settings_values(
        {
            **SHARED_REDIS,
            "SECRET_KEY": "staging-" + "t" * 50,
            "DATABASE_URL": "postgres://tollgate@db.internal:5432/tollgate_staging",
            "REDIS_URL": "redis://redis.internal:6379/1",
        }
    )
    assert staging["TOLLGATE_DEPLOYMENT"] != name
    # A worker of production reaching the same database by another address and
    # password, with a broker of its own, is still production.
    worker = settings_values(
        {
            **SHARED_REDIS,
            "DATABASE_URL": "postgres://tollgate:pw@10.0.0.5:6432/tollgate",
            "CELERY_BROKER_URL": "redis://redis.internal:6379/2",
        }
    )
    assert worker["TOLLGATE_DEPLOYMENT"] == name
    assert worker["CELERY_BROKER_TRANSPORT_OPTIONS"]["global_keyprefix"] == f"tollgate.{name}."


def test_default_deployment_name_differs_with_either_input():
    name = deployment_default(database_name="tollgate", secret_key="k" * 50)
    assert len(name) == 10
    assert name == deployment_default(database_name="tollgate", secret_key="k" * 50)
    assert name != deployment_default(database_name="tollgate2", secret_key="k" * 50)
    assert name != deployment_default(database_name="tollgate", secret_key="j" * 50)
    assert "k" * 10 not in name


@pytest.mark.parametrize("bad", ["prod.eu", "has space", "x" * 41, "-lead", "prod:1", "é"])
def test_deployment_name_must_be_short_letters_digits_dash_underscore(bad):
    with pytest.raises(ImproperlyConfigured, match="TOLLGATE_DEPLOYMENT"):
        deployment_name(bad, database_name="tollgate", secret_key="k")
    assert deployment_name("eu-prod_2", database_name="tollgate", secret_key="k") == "eu-prod_2"


def test_a_bad_deployment_name_refuses_to_start():
    result = load_settings({**SHARED_REDIS, "TOLLGATE_DEPLOYMENT": "prod.eu"})
    assert result.returncode != 0
    assert "TOLLGATE_DEPLOYMENT='prod.eu' is not a deployment name" in result.stderr


def test_embedded_mode_keeps_its_in_process_layers(tmp_path):
    values = settings_values({"DEBUG": "True", "TOLLGATE_DATA_DIR": str(tmp_path)})
    assert values["CHANNEL_LAYERS"] == {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}
    }
    assert values["CACHES"] == {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    }
    assert "global_keyprefix" not in values["CELERY_BROKER_TRANSPORT_OPTIONS"]


# -- the origins a WebSocket may come from ------------------------------------------


def test_websocket_origins_are_the_exact_csrf_trusted_origins_and_the_extra_ones():
    values = settings_values(
        {
            **SHARED_REDIS,
            "CSRF_TRUSTED_ORIGINS": "https://tollgate.example.com,https://*.example.org",
            "TOLLGATE_WEBSOCKET_ORIGINS": "https://Chat.Example.org/,https://tollgate.example.com",
        }
    )
    assert values["TOLLGATE_WEBSOCKET_ORIGINS"] == [
        "https://tollgate.example.com",
        "https://chat.example.org",
    ]


def test_production_without_origins_accepts_no_websocket():
    assert settings_values(SHARED_REDIS)["TOLLGATE_WEBSOCKET_ORIGINS"] == []


def test_debug_and_embedded_mode_accept_the_loopback_serve_address(tmp_path):
    loopback = ["http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000"]
    debug = settings_values({**SHARED_REDIS, "DEBUG": "True"})
    assert debug["TOLLGATE_WEBSOCKET_ORIGINS"] == loopback
    embedded = settings_values(
        {"SECRET_KEY": SHARED_REDIS["SECRET_KEY"], "TOLLGATE_DATA_DIR": str(tmp_path)}
    )
    assert embedded["TOLLGATE_WEBSOCKET_ORIGINS"] == loopback
    served = settings_values(
        {
            "SECRET_KEY": SHARED_REDIS["SECRET_KEY"],
            "TOLLGATE_DATA_DIR": str(tmp_path),
            "TOLLGATE_WEBSOCKET_ORIGINS": "http://127.0.0.1:8123",
        }
    )
    assert served["TOLLGATE_WEBSOCKET_ORIGINS"] == ["http://127.0.0.1:8123"]


def test_a_websocket_origin_that_is_not_exact_refuses_to_start():
    result = load_settings({**SHARED_REDIS, "TOLLGATE_WEBSOCKET_ORIGINS": "tollgate.example.com"})
    assert result.returncode != 0
    assert "TOLLGATE_WEBSOCKET_ORIGINS: 'tollgate.example.com' is not an exact origin" in (
        result.stderr
    )


@pytest.mark.parametrize(
    ("given", "exact"),
    [
        ("https://tollgate.example.com", "https://tollgate.example.com"),
        ("HTTPS://Tollgate.Example.COM/", "https://tollgate.example.com"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://[::1]:8000", "http://[::1]:8000"),
    ],
)
def test_origin_exact_normalises(given, exact):
    assert origin_exact(given, setting="X") == exact


@pytest.mark.parametrize(
    "bad",
    [
        "tollgate.example.com",
        "ftp://tollgate.example.com",
        "https://*.example.com",
        "https://.example.com",
        "https://tollgate.example.com/chat",
        "https://tollgate.example.com?x=1",
        "https://user@tollgate.example.com",
        "https://tollgate.example.com:99999",
        "*",
        "",
    ],
)
def test_origin_exact_refuses_anything_but_one_origin(bad):
    with pytest.raises(ImproperlyConfigured, match="not an exact origin"):
        origin_exact(bad, setting="TOLLGATE_WEBSOCKET_ORIGINS")


def test_check_deploy_warns_when_no_origin_may_open_the_websocket():
    env = {**PRODUCTION_ENV, "CSRF_TRUSTED_ORIGINS": "", "TOLLGATE_WEBSOCKET_ORIGINS": ""}
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode != 0
    assert "tollgate.W001" in result.stdout + result.stderr
