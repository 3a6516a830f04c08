"""The Docker packaging (docker-compose.yml, Dockerfile, .dockerignore) agrees with the code it runs."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest

from sendtrack.settings import Settings
from sinks.migrate import check_server_version

ROOT = Path(__file__).resolve().parents[2]

# The seven topics the worker reads and writes (agents/app.py): CONTRACT §3's five, then the two
# internal ones. Written out because importing agents.app builds the Faust app.
WORKER_TOPICS = [
    "send-requests",
    "provider-callbacks",
    "status-changes",
    "dead-letters",
    "provider-webhooks",
    "sendtrack-routed",
    "sendtrack-by-provider-id",
]
SETTING_ENV_NAMES = {f"{Settings.model_config['env_prefix']}{name}".upper() for name in Settings.model_fields}


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [key for key, _ in pairs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    assert not duplicates, f"duplicate keys in docker-compose.yml: {duplicates}"
    return dict(pairs)


@pytest.fixture(scope="module")
def compose() -> dict:
    # docker-compose.yml is written as JSON, which is YAML too: Compose reads the file as it is, and
    # the standard library parses it exactly as Compose does (no YAML subset parser to trust).
    return json.loads((ROOT / "docker-compose.yml").read_text(), object_pairs_hook=_no_duplicate_keys)


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: str, env: dict[str, str]) -> str:
    """The value Compose passes to a container, given the variables of the shell that runs it."""

    def resolve(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        if match["bare"]:
            return env.get(match["bare"], "")
        name, op, arg = match["name"], match["op"] or "", match["arg"] or ""
        is_set = name in env and (env[name] != "" or not op.startswith(":"))
        if op.endswith("-"):
            return env[name] if is_set else arg
        if op.endswith("?"):
            if not is_set:
                raise KeyError(f"{name}: {arg}")
            return env[name]
        if op.endswith("+"):
            return arg if is_set else ""
        return env.get(name, "")

    return _VARIABLE.sub(resolve, value)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of each Dockerfile instruction, continuation lines joined."""
    instructions, pending = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def test_the_stack_has_its_four_services(services: dict) -> None:
    assert {"kafka", "clickhouse", "topics", "worker"} <= services.keys()


def test_every_sendtrack_variable_is_a_setting(services: dict) -> None:
    used = set()
    for path in [ROOT / "docker-compose.yml", ROOT / "Dockerfile", *sorted((ROOT / "docker").glob("*"))]:
        used |= set(re.findall(r"SENDTRACK_[A-Z0-9_]+", path.read_text()))
    assert set(services["worker"]["environment"]) <= used  # the scan sees the worker's variables
    assert used - SETTING_ENV_NAMES == set(), "not fields of sendtrack.settings.Settings"


def test_topics_service_creates_exactly_the_worker_topics(services: dict) -> None:
    topics = services["topics"]
    assert topics["command"] == WORKER_TOPICS
    assert topics["image"] == services["kafka"]["image"]  # its kafka-topics.sh matches the broker
    assert topics["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    script = topics["entrypoint"][-1]
    mounted = {target: source for source, target, *_ in (v.split(":") for v in topics["volumes"])}
    assert (ROOT / mounted[script]).is_file()
    assert "kafka-topics.sh" in (ROOT / mounted[script]).read_text()


@pytest.mark.parametrize("shell", [{}, {"SENDTRACK_PARTITIONS": "16", "SENDTRACK_TOPIC_PREFIX": "dev-"}])
def test_topics_and_worker_agree_on_partitions_and_prefix(services: dict, shell: dict[str, str]) -> None:
    topics, worker = services["topics"]["environment"], services["worker"]["environment"]
    for name in ("SENDTRACK_PARTITIONS", "SENDTRACK_TOPIC_PREFIX", "SENDTRACK_KAFKA_BROKER"):
        assert interpolate(topics[name], shell) == interpolate(worker[name], shell), name
    partitions = interpolate(worker["SENDTRACK_PARTITIONS"], shell)
    assert partitions == shell.get("SENDTRACK_PARTITIONS", str(Settings.model_fields["partitions"].default))
    assert Settings(partitions=partitions).partitions == int(partitions)


def test_worker_uses_the_internal_kafka_listener(services: dict) -> None:
    broker = services["worker"]["environment"]["SENDTRACK_KAFKA_BROKER"]
    assert broker == "kafka:9092"
    kafka = services["kafka"]["environment"]
    advertised = dict(item.split("://") for item in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))
    listeners = dict(item.split("://") for item in kafka["KAFKA_LISTENERS"].split(","))
    name = next(name for name, address in advertised.items() if address == broker)
    assert name == kafka["KAFKA_INTER_BROKER_LISTENER_NAME"]  # the listener other containers use
    assert listeners[name].rsplit(":", 1)[1] == broker.rsplit(":", 1)[1]


def test_worker_clickhouse_url_names_the_clickhouse_service(services: dict) -> None:
    url = services["worker"]["environment"]["SENDTRACK_CLICKHOUSE_URL"]
    parsed, clickhouse = urlparse(url), services["clickhouse"]["environment"]
    assert parsed.scheme == "http" and parsed.hostname == "clickhouse" and parsed.port == 8123
    assert (parsed.username, parsed.password) == (clickhouse["CLICKHOUSE_USER"], clickhouse["CLICKHOUSE_PASSWORD"])
    assert parsed.path.strip("/") == Settings.model_fields["clickhouse_database"].default
    assert not Settings(clickhouse_url=url).clickhouse_is_embedded


def test_worker_starts_after_kafka_topics_and_clickhouse(services: dict) -> None:
    assert services["worker"]["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "topics": {"condition": "service_completed_successfully"},
        "clickhouse": {"condition": "service_healthy"},
    }
    assert services["topics"]["restart"] == "no"  # a one-shot job, not restarted once done
    for service in services.values():
        for dependency, how in service.get("depends_on", {}).items():
            if how["condition"] == "service_healthy":
                assert services[dependency]["healthcheck"]["test"], dependency


def test_worker_web_server_and_data_dir(compose: dict, services: dict) -> None:
    worker = services["worker"]
    env = worker["environment"]
    assert env["SENDTRACK_WEB_HOST"] == "0.0.0.0"
    assert env["SENDTRACK_WEB_PORT"] == str(Settings.model_fields["web_port"].default)
    assert any(port.rsplit(":", 1)[-1] == env["SENDTRACK_WEB_PORT"] for port in worker["ports"])
    mounts = dict(reversed(volume.split(":")[:2]) for volume in worker["volumes"])
    assert mounts[env["SENDTRACK_DATA_DIR"]] in compose["volumes"]  # a named volume
    assert worker["build"] == {"context": ".", "dockerfile": "Dockerfile"}


def test_images_are_pinned(services: dict) -> None:
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", services["kafka"]["image"])
    assert re.fullmatch(r"clickhouse/clickhouse-server:\d+\.\d+(\.\d+)*", services["clickhouse"]["image"])


def test_the_clickhouse_image_runs_the_migrations(services: dict) -> None:
    version = services["clickhouse"]["image"].split(":")[1]
    check_server_version(version)  # raises for a server older than the migrations need


def test_dockerfile_installs_the_project_and_runs_the_worker() -> None:
    instructions = dockerfile_instructions()
    assert [args for keyword, args in instructions if keyword == "FROM"] == ["python:3.11-slim"]
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert "pip install" in runs and "[dev]" not in runs
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    cmd = json.loads([args for keyword, args in instructions if keyword == "CMD"][-1])
    assert cmd == ["sendtrack", "worker"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert cmd[0] in scripts
    healthcheck = [args for keyword, args in instructions if keyword == "HEALTHCHECK"]
    assert len(healthcheck) == 1 and "urllib.request" in healthcheck[0] and "/health" in healthcheck[0]


def test_dockerignore_lets_through_what_pip_install_needs() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    readme = project["project"].get("readme", "pyproject.toml")
    needed = {"pyproject.toml", readme["file"] if isinstance(readme, dict) else readme}
    needed |= {package.split(".")[0] for package in project["tool"]["setuptools"]["packages"]}
    assert needed <= allowed
