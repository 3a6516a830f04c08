"""The Docker packaging (docker-compose.yml, Dockerfile, .dockerignore) agrees with the code it runs."""

from __future__ import annotations

import json
import re
import subprocess
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
    for path in [ROOT / "docker-compose.yml", ROOT / "Dockerfile",
                 *sorted(p for p in (ROOT / "docker").rglob("*") if p.is_file())]:
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


def test_the_servers_reader_user_is_readonly_with_the_workers_query_limits(services: dict) -> None:
    """docker/clickhouse-reader.xml: the analysts' user of a ClickHouse server has the limits the
    embedded engine's readers' sessions have (sinks/analyst.py), readonly last, SELECT on sendtrack."""
    import xml.etree.ElementTree as ET

    from sinks.analyst import analyst_limits

    root = ET.parse(ROOT / "docker" / "clickhouse-reader.xml").getroot()
    profile = root.find("profiles/sendtrack_reader")
    assert [child.tag for child in profile][-1] == "readonly"
    settings = {child.tag: child.text for child in profile if child.tag != "constraints"}
    # The one setting a reader may change (Grafana sends it), and only downwards.
    constraint = profile.find("constraints/max_execution_time")
    assert [c.tag for c in profile.find("constraints")] == ["max_execution_time"]
    assert constraint.find("max").text == settings["max_execution_time"]
    assert constraint.find("changeable_in_readonly") is not None
    def text(value: object) -> str:
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)

    assert settings == {name: text(value) for name, value in analyst_limits(Settings()).items()}
    user = root.find("users/sendtrack_reader")
    assert user.find("profile").text == "sendtrack_reader"
    assert [q.text for q in user.findall("grants/query")] == ["GRANT SELECT ON sendtrack.*"]
    mounted = [v for v in services["clickhouse"]["volumes"] if "clickhouse-reader.xml" in v]
    assert mounted == ["./docker/clickhouse-reader.xml:/etc/clickhouse-server/users.d/sendtrack-reader.xml:ro"]
    reader_url = urlparse(services["worker"]["environment"]["SENDTRACK_CLICKHOUSE_READER_URL"])
    assert reader_url.username == "sendtrack_reader" and reader_url.path == "/sendtrack"


def test_the_topics_service_sets_the_workers_record_limits() -> None:
    """docker/create-topics.sh creates topics with the max.message.bytes the worker would set."""
    from sendtrack.topics import TOPIC_CONFIGS

    script = (ROOT / "docker" / "create-topics.sh").read_text()
    set_there = {name: value for names, value in
                 re.findall(r"^\s+([a-z| -]+)\) config=\(--config max\.message\.bytes=(\d+) ", script, re.M)
                 for name in (n.strip() for n in names.split("|"))}
    assert set_there == {name: c["max.message.bytes"] for name, c in TOPIC_CONFIGS.items()}


def test_the_topics_service_sets_the_workers_retention(tmp_path) -> None:
    """docker/create-topics.sh gives each topic the retention.ms the worker would (sendtrack/topics.py),
    from the same settings and defaults: run it against a stand-in kafka-topics.sh that records its
    arguments."""
    from sendtrack.settings import Settings
    from sendtrack.topics import CONTRACT, INTERNAL, retention_ms

    fake = tmp_path / "kafka-topics.sh"
    fake.write_text('#!/usr/bin/env bash\necho "$*" >> "$(dirname "$0")/calls"\n')
    fake.chmod(0o755)
    names = list(CONTRACT + INTERNAL)
    for env, settings in (({}, Settings()),
                          ({"SENDTRACK_TOPIC_RETENTION_DAYS": "2.5", "SENDTRACK_WEBHOOK_RETENTION_HOURS": "6"},
                           Settings(topic_retention_days=2.5, webhook_retention_hours=6))):
        (tmp_path / "calls").unlink(missing_ok=True)
        subprocess.run(["bash", str(ROOT / "docker" / "create-topics.sh"), *names], env={
            "PATH": "/usr/bin:/bin", "SENDTRACK_KAFKA_BROKER": "b:9092", "KAFKA_BIN": str(tmp_path), **env},
            capture_output=True, text=True, timeout=30)
        created = {call.split("--topic ")[1].split()[0]: dict(re.findall(r"--config (\S+?)=(\S+)", call))
                   for call in (tmp_path / "calls").read_text().splitlines() if "--create" in call}
        assert {n: c["retention.ms"] for n, c in created.items()} == {n: str(retention_ms(settings, n)) for n in names}


# Grafana (docs/grafana.md). Its provisioning files are written as JSON, which is YAML too, for the
# reason docker-compose.yml is: the standard library parses them exactly as Grafana does.
GRAFANA = ROOT / "docker" / "grafana"
CONTRACT_VIEWS = {"funnel_daily", "current_status_daily", "failure_reasons", "messages", "status_changes",
                  "engagement_events", "dead_letters"}


def _mounts(service: dict) -> dict[str, str]:
    """Container path -> host path (or named volume) of a service's volumes."""
    return {target: source for source, target, *_ in (volume.split(":") for volume in service["volumes"])}


def _in_container(service: dict, container_path: str) -> Path:
    """The repository file that a bind mount puts at `container_path`."""
    for target, source in sorted(_mounts(service).items(), key=lambda item: -len(item[0])):
        if source.startswith("./") and (container_path == target or container_path.startswith(target + "/")):
            return ROOT / source / container_path[len(target):].lstrip("/")
    raise AssertionError(f"nothing of the repository is mounted at {container_path}")


@pytest.fixture(scope="module")
def grafana(services: dict) -> dict:
    return services["grafana"]


@pytest.fixture(scope="module")
def datasource(grafana: dict) -> dict:
    folder = _in_container(grafana, "/etc/grafana/provisioning/datasources")
    (source,) = [d for f in sorted(folder.glob("*.yaml")) for d in json.loads(f.read_text())["datasources"]]
    return source


@pytest.fixture(scope="module")
def dashboards(grafana: dict) -> dict[str, dict]:
    """The dashboards Grafana's file providers load, by file name."""
    folder = _in_container(grafana, "/etc/grafana/provisioning/dashboards")
    (provider,) = [p for f in sorted(folder.glob("*.yaml")) for p in json.loads(f.read_text())["providers"]]
    assert provider["type"] == "file" and not provider["allowUiUpdates"]
    files = sorted(_in_container(grafana, provider["options"]["path"]).glob("*.json"))
    assert files, "the provider's folder has no dashboard"
    return {f.name: json.loads(f.read_text()) for f in files}


def test_grafana_is_pinned_private_and_has_no_default_password(compose: dict, grafana: dict) -> None:
    assert re.fullmatch(r"grafana/grafana:12\.\d+\.\d+", grafana["image"])
    env = grafana["environment"]
    # Installed before Grafana starts (preinstall_sync), so provisioning finds the data source type.
    assert re.fullmatch(r"grafana-clickhouse-datasource@\d+\.\d+\.\d+", env["GF_PLUGINS_PREINSTALL_SYNC"])
    assert "GF_INSTALL_PLUGINS" not in env  # deprecated in Grafana 12; both at once would be ambiguous
    assert all(port.startswith("127.0.0.1:") for port in grafana["ports"])
    for name in ("GF_SECURITY_ADMIN_PASSWORD", "CLICKHOUSE_READER_PASSWORD"):
        with pytest.raises(KeyError):
            interpolate(env[name], {})  # compose refuses to start without it
    assert interpolate(env["GF_SECURITY_ADMIN_PASSWORD"], {"GRAFANA_ADMIN_PASSWORD": "s3cret"}) == "s3cret"
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    mounts = _mounts(grafana)
    assert mounts["/var/lib/grafana"] in compose["volumes"]  # its database survives a restart
    assert all(volume.endswith(":ro") for volume in grafana["volumes"] if volume.startswith("./"))
    assert _in_container(grafana, env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]).is_file()


def test_grafanas_data_source_is_the_read_only_reader_on_the_clickhouse_service(services: dict, grafana: dict,
                                                                                datasource: dict) -> None:
    import xml.etree.ElementTree as ET

    assert datasource["type"] == "grafana-clickhouse-datasource" and datasource["access"] == "proxy"
    options = datasource["jsonData"]
    assert options["host"] == "clickhouse" and options["host"] in services
    assert options["protocol"] == "http" and not options["secure"]
    assert any(port.rsplit(":", 1)[-1] == str(options["port"]) for port in services["clickhouse"]["ports"])
    assert options["defaultDatabase"] == Settings.model_fields["clickhouse_database"].default
    reader = ET.parse(ROOT / "docker" / "clickhouse-reader.xml").getroot()
    assert reader.find(f"users/{options['username']}/password").get("from_env") == "CLICKHOUSE_READER_PASSWORD"
    # Grafana expands ${VAR} in provisioning files from its own environment, which compose fills
    # from the same shell variable as the clickhouse service's.
    assert datasource["secureJsonData"]["password"] == "${CLICKHOUSE_READER_PASSWORD}"
    assert grafana["environment"]["CLICKHOUSE_READER_PASSWORD"] == \
        services["clickhouse"]["environment"]["CLICKHOUSE_READER_PASSWORD"]
    # The plugin's client sends max_execution_time = (time left of the query timeout) + 5 s with
    # every query; the reader profile's limit is the most a readonly user may ask for.
    limit = int(reader.find("profiles/sendtrack_reader/max_execution_time").text)
    assert int(options["queryTimeout"]) + 5 <= limit


def test_every_dashboard_query_uses_the_provisioned_data_source(datasource: dict, dashboards: dict) -> None:
    expected = {"type": datasource["type"], "uid": datasource["uid"]}
    (dashboard,) = dashboards.values()
    assert dashboard["title"] == "sendtrack funnels"
    queries = [*dashboard["panels"], *dashboard["templating"]["list"]]
    assert len(dashboard["panels"]) >= 7
    for item in queries:
        assert item["datasource"] == expected, item.get("title", item.get("name"))
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            assert target["datasource"] == expected, panel["title"]


def _dashboard_sql(dashboards: dict) -> list[tuple[str, str]]:
    (dashboard,) = dashboards.values()
    return [(p["title"], t["rawSql"]) for p in dashboard["panels"] for t in p["targets"]] + \
        [(v["name"], v["query"]["rawSql"]) for v in dashboard["templating"]["list"]]


def test_dashboard_queries_read_only_the_contract_views(dashboards: dict) -> None:
    """Panels read the views (funnel_daily's merged states, the messages view ...), never the raw or
    aggregate tables behind them, and name the database (the worker's ClickHouse HTTP interface
    starts in `default`)."""
    for title, sql in _dashboard_sql(dashboards):
        sources = re.findall(r"\b(?:FROM|JOIN)\s+([^\s(]+)", sql, re.I)
        assert sources, title
        for source in sources:
            database, _, view = source.partition(".")
            assert database == "sendtrack" and view in CONTRACT_VIEWS, (title, source)


def test_the_rate_panel_knows_which_actions_reach_each_status(dashboards: dict) -> None:
    """A rate an action cannot have is empty on the dashboard, as in the funnel report: its lists
    of actions are schemas/models.py's ACTIONS."""
    from schemas.models import ACTIONS

    (sql,) = [sql for title, sql in _dashboard_sql(dashboards) if "can_deliver" in sql]
    lists = {name: set(re.findall(r"'(\w+)'", items))
             for items, name in re.findall(r"\[([^\]]*)\] AS (can_\w+)", sql)}
    assert lists == {f"can_{verb}": {a for a, reached in ACTIONS.items() if status in reached}
                     for verb, status in (("deliver", "delivered"), ("open", "opened"), ("click", "clicked"))}
