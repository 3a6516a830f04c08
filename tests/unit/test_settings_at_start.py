"""Settings are read when a command starts, not when a module is imported: the library (sendtrack/,
sinks/, schemas/) imports without reading the environment, and only the worker's own modules
(agents/, which `sendtrack worker` imports when it starts) read it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

IMPORT_ALL = """
import importlib, pkgutil, sys
names = []
for package in ("sendtrack", "sinks", "schemas"):
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        if info.name != "sendtrack.__main__":
            importlib.import_module(info.name)
            names.append(info.name)
print(len(names))
"""


def run(code: str) -> subprocess.CompletedProcess:
    # An invalid setting: whatever reads the settings fails on it.
    env = {**os.environ, "SENDTRACK_PARTITIONS": "not-a-number"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_the_library_imports_without_reading_settings():
    done = run(IMPORT_ALL)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) > 20


def test_the_worker_reads_them_when_it_starts():
    done = run("import agents.app")
    assert done.returncode != 0 and "partitions" in done.stderr.lower(), done.stderr[-2000:]


def test_every_setting_is_documented_in_the_contract():
    """docs/contract.md's settings table names every field of Settings (as its environment variable)."""
    from pathlib import Path

    from sendtrack.settings import Settings

    doc = (Path(__file__).resolve().parents[2] / "docs" / "contract.md").read_text()
    prefix = Settings.model_config["env_prefix"].upper()
    missing = [name for name in Settings.model_fields if f"`{prefix}{name.upper()}`" not in doc]
    assert not missing, f"settings without a row in docs/contract.md: {missing}"


def test_a_bad_setting_is_named_without_printing_any_settings_value():
    """pydantic's own message for a check over several settings shows every setting's value, and
    the settings hold readers', admins' and providers' secrets."""
    env = {**os.environ, "SENDTRACK_READERS": "ana:pw-secret-1", "SENDTRACK_ADMINS": "dpo:pw-secret-2",
           "SENDTRACK_READER_WORKSPACES": "bob=shop-1", "SENDTRACK_SENDGRID_PUBLIC_KEY": "pw-secret-3"}
    done = subprocess.run([sys.executable, "-m", "sendtrack.cli", "report", "funnel"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "cannot start with these settings" in done.stderr
    assert "SENDTRACK_READER_WORKSPACES names 'bob', who is not in SENDTRACK_READERS" in done.stderr
    assert "pw-secret" not in done.stderr + done.stdout, done.stderr[-2000:]
