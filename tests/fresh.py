"""Running a snippet in a fresh Python process with Django set up (first-use costs:
imports, tokenizers and connections the test process has long since made)."""

from __future__ import annotations

import os
import subprocess
import sys

SETUP = (
    "import os, django\n"
    "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'project.settings')\n"
    "django.setup()\n"
)


def fresh_process(code: str, **env: str) -> str:
    """Run ``code`` after Django's setup in a new interpreter with this process's
    environment plus ``env``; its standard output. Fails the test (with the end
    of its standard error) when it exits non-zero; times out after 120 s."""
    done = subprocess.run(
        [sys.executable, "-c", SETUP + code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
