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


def test_a_worker_with_neither_engine_nor_sink_is_refused():
    env = {**os.environ, "SENDTRACK_ENGINE_ENABLED": "false", "SENDTRACK_SINK_ENABLED": "false"}
    done = subprocess.run([sys.executable, "-m", "sendtrack.cli", "worker"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "SENDTRACK_ENGINE_ENABLED and SENDTRACK_SINK_ENABLED are both false" in done.stderr


WHAT_RUNS = """
import json
from agents import app as app_module, engine, webhooks, clickhouse_http, faust_adapter
app = app_module.app
print(json.dumps({"id": app.conf.id, "agents": sorted(app.agents), "tables": sorted(app.tables),
                  "handlers": sorted(faust_adapter._handlers), "timers": sorted(
                      t.__name__ for t in app._app_tasks if "sweep" in getattr(t, "__name__", "")),
                  "services": sorted(s.__name__ if isinstance(s, type) else type(s).__name__
                                     for s in app._extra_services)}))
"""


def what_runs(**env: str) -> dict:
    import json

    done = subprocess.run([sys.executable, "-c", WHAT_RUNS], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SENDTRACK_APP_ID": "split-check", "SENDTRACK_TOPIC_PREFIX": "p.",
                               "SENDTRACK_CLICKHOUSE_HTTP_PORT": "18123", **env})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_a_sink_worker_has_no_agent_table_or_sweep_and_a_group_of_its_own():
    """SENDTRACK_ENGINE_ENABLED=false: nothing subscribes to the inputs (the engine's group would give
    it partitions it does not read), no table is restored, no sweep ticks; the sink stays."""
    whole = what_runs()
    assert whole["id"] == "split-check"
    assert whole["agents"] and whole["tables"] and whole["handlers"] and whole["timers"]
    sink = what_runs(SENDTRACK_ENGINE_ENABLED="false")
    assert sink["id"] == "split-check-sink-worker"
    assert sink["agents"] == [] and sink["tables"] == [] and sink["handlers"] == [] and sink["timers"] == []
    assert {"ClickHouseSink", "ClickHouseHTTPService"} <= set(sink["services"])
    # An engine-only worker has no ClickHouse to serve over HTTP (a sink worker on the same machine does).
    engine = what_runs(SENDTRACK_SINK_ENABLED="false")
    assert engine["id"] == "split-check" and engine["agents"] and engine["tables"]
    assert "ClickHouseSink" not in engine["services"] and "ClickHouseHTTPService" not in engine["services"]
