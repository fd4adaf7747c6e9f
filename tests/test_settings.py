"""Settings read from the environment: refusals and the deploy checklist.

Each case starts a fresh Python process, since settings are read once at import.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEBUG"}}
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


PRODUCTION_ENV = {
    "DEBUG": "False",
    "SECRET_KEY": "p" * 20 + "-Zq8w!Kd2@xVb9#Lm4$Tn7&Rc5*Hy3^Gf6",
    "ALLOWED_HOSTS": "tollgate.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://tollgate.example.com",
    "SECURE_SSL_REDIRECT": "True",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "True",
    "SECURE_HSTS_PRELOAD": "True",
    "USE_X_FORWARDED_PROTO": "True",
}


def test_check_deploy_is_clean_with_production_values():
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_warns_with_debug_on():
    result = run_manage(
        "check", "--deploy", "--fail-level", "WARNING", env={**PRODUCTION_ENV, "DEBUG": "True"}
    )
    assert result.returncode != 0
    assert "security.W018" in result.stdout + result.stderr
