"""The deployment files are consistent with each other and with the engine.

Docker cannot pull images here, so the structure is checked instead: deploy/compose.yaml parses
and holds the broker, Redis (append-only file), the engine, Prometheus and Grafana; the engine's
command and environment go through the real CLI parser and settings loader; Redis really starts
with the compose command line; Prometheus' configuration passes ``promtool check config`` with
the mounts resolved and scrapes the engine's metrics port; Grafana provisions the shipped
dashboard. The Dockerfile copies files that exist and its command parses; the lock pins the
runtime dependencies with hashes and leaves the report extra out.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from deploy_files import (
    COMPOSE, DEPLOY, DOCKERFILE, EXAMPLE_ENV, LOCK, ROOT, Mount, compose, copy_sources, dockerfile_stages,
    dockerignore_patterns, dockerignored, exec_form, host_path, interpolate, mounts, published, read_env_file,
    stage_env, variables,
)
from redis_servers import free_port, require
from shipped_metrics import DASHBOARD, RULES, markdown_anchors
from touchline import cli
from touchline.journey_files import load_journeys
from touchline.settings import Settings, load_settings

SERVICES = {"broker", "redis", "engine", "prometheus", "grafana"}
#: Stand-ins for the secrets deploy/example.env leaves empty.
SECRETS = {"TOUCHLINE_REDIS_PASSWORD": "redis-pw-1", "TOUCHLINE_ERASURE_KEY": "erasure-key-1",
           "TOUCHLINE_CHECKPOINT_KEY": "checkpoint-key-1", "GRAFANA_ADMIN_PASSWORD": "grafana-pw-1"}


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return compose(SECRETS)["services"]


def runtime_env() -> dict[str, str]:
    return stage_env(dockerfile_stages(), "runtime")


def engine_settings(services: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The engine service's settings as the CLI in the container would load them: the image's
    ENV, then the service's environment, then its command's flags, with the config file it mounts."""
    engine = services["engine"]
    for key in [k for k in os.environ if k.startswith("TOUCHLINE_")]:
        monkeypatch.delenv(key)
    for key, value in {**runtime_env(), **engine.get("environment", {})}.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.chdir(ROOT)  # the image's working directory holds examples/, as the repository does
    args = cli._parser().parse_args(engine["command"])
    assert args.command == "run"
    if args.config is not None:
        args.config = host_path(engine, str(args.config))
        assert args.config is not None and args.config.is_file(), "the engine's --config is not a mounted file"
    return load_settings(args.config, cli._overrides(args))


def settings_keys(model: type, prefix: str = "") -> set[str]:
    """Every dotted settings key (sections and their fields)."""
    keys = set()
    for name, info in model.model_fields.items():
        keys.add(prefix + name)
        annotation = info.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            keys |= settings_keys(annotation, f"{prefix}{name}.")
    return keys


def flatten(data: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out.add(prefix + key)
    return out


# --------------------------------------------------------------------------- compose
def test_compose_has_the_services_with_pinned_images_published_on_loopback(services):
    assert set(services) == SERVICES
    for name, service in services.items():
        if name == "engine":
            build = service["build"]
            context = (DEPLOY / build["context"]).resolve()
            assert context == ROOT and (context / build["dockerfile"]).resolve() == DOCKERFILE
            continue
        image = service["image"]
        assert re.fullmatch(r"[\w./-]+:v?\d[\w.-]*", image), f"{name}: image {image!r} is not pinned to a version"
    for name, service in services.items():
        for address, host_port, _ in published(service):
            assert address == "127.0.0.1", f"{name}: port {host_port} is published beyond loopback"
        assert service.get("restart") == "unless-stopped", name


def test_compose_secrets_are_variables_the_example_env_lists_empty():
    used = variables(COMPOSE.read_text())
    example = read_env_file(EXAMPLE_ENV)
    assert used == set(example) == set(SECRETS)
    assert all(value == "" for value in example.values()), "deploy/example.env must not hold a secret"
    text = COMPOSE.read_text()
    for name in used:  # compose refuses to start while one is unset or empty
        assert re.search(r"\$\{" + name + r":\?[^}]+\}", text), f"{name} is never required (${{{name}:?...}})"
    with pytest.raises(ValueError, match="TOUCHLINE_REDIS_PASSWORD"):
        compose(example)
    assert "deploy/.env" in (ROOT / ".gitignore").read_text().split()


def test_compose_volumes_are_declared_used_and_exist():
    raw = yaml.safe_load(COMPOSE.read_text())
    declared = set(raw.get("volumes") or {})
    named: set[str] = set()
    for name, service in compose(SECRETS)["services"].items():
        for m in mounts(service):
            if m.is_bind:
                assert m.host_path().exists(), f"{name}: {m.source} does not exist"
                assert m.read_only, f"{name}: {m.source} is mounted writable"
            else:
                named.add(m.source)
    assert named == declared, f"volumes used {sorted(named)} vs declared {sorted(declared)}"


def test_engine_command_and_environment_load_with_the_cli(services, monkeypatch):
    settings = engine_settings(services, monkeypatch)
    engine = services["engine"]
    assert settings.source.kind == "kafka" and settings.engine.clock == "wall"
    # Kafka: the broker service's internal listener, advertised under its service name
    broker = services["broker"]["environment"]
    assert [h.rsplit(":", 1)[0] for h in settings.kafka.bootstrap.split(",")] == ["broker"]
    port = settings.kafka.bootstrap.rsplit(":", 1)[1]
    assert f"//broker:{port}" in broker["KAFKA_ADVERTISED_LISTENERS"]
    assert f"//:{port}" in broker["KAFKA_LISTENERS"]
    assert settings.kafka.partitions == int(broker["KAFKA_NUM_PARTITIONS"]), "topics made by either differ"
    # Redis: the redis service, with the password it requires
    url = urlsplit(settings.state.url)
    assert (url.scheme, url.hostname, url.port or 6379) == ("redis", "redis", 6379)
    redis_command = services["redis"]["command"]
    assert settings.state.password is not None
    assert redis_command[redis_command.index("--requirepass") + 1] == settings.state.password.get_secret_value()
    assert settings.state.erasure_key is not None and settings.models.checkpoint_key is not None
    # metrics: reachable on the container network, the published port is the metrics port
    assert settings.metrics.enabled and settings.metrics.host == "0.0.0.0"
    assert [c for _, _, c in published(engine)] == [settings.metrics.port]
    # outputs and recovery snapshots on a named volume
    data = [m for m in mounts(engine) if not m.is_bind and Path(m.target) == settings.output.dir]
    assert data, f"output.dir {settings.output.dir} is not on a volume"
    assert settings.runtime.recovery and settings.runtime.recovery_dir in (None, settings.output.dir / "recovery")
    # the journeys it names load without a problem
    loaded, problems = load_journeys(list(settings.journeys.files))
    assert loaded and not problems


def test_engine_environment_and_config_file_name_real_settings_and_do_not_shadow(services):
    keys = settings_keys(Settings)
    env = {**runtime_env(), **services["engine"].get("environment", {})}
    from_env = set()
    for name in env:
        if name.startswith("TOUCHLINE_"):
            key = name.removeprefix("TOUCHLINE_").lower().replace("__", ".")
            assert key in keys, f"{name}: no setting {key} (the loader ignores an unknown section silently)"
            from_env.add(key)
    config = host_path(services["engine"], "/etc/touchline/touchline.toml")
    assert config is not None
    in_file = flatten(tomllib.loads(config.read_text()))
    assert not in_file & from_env, f"{config.name} sets keys the environment outranks: {in_file & from_env}"


def test_redis_starts_with_the_compose_command_and_keeps_an_append_only_file(services, tmp_path):
    command = services["redis"]["command"]
    assert command[0] == "redis-server"
    port = free_port()
    server = subprocess.Popen([require("redis-server"), *command[1:], "--port", str(port), "--bind", "127.0.0.1",
                               "--dir", str(tmp_path), "--save", ""],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        client = redis.Redis(port=port, password=SECRETS["TOUCHLINE_REDIS_PASSWORD"], socket_timeout=5)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert server.poll() is None, "redis-server exited: the compose command line is wrong"
                time.sleep(0.05)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, socket_timeout=5).ping()
    finally:
        server.terminate()
        server.wait(10)


def _prometheus_config(services: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    prometheus = services["prometheus"]
    flags = dict(arg.split("=", 1) for arg in prometheus["command"] if "=" in arg)
    path = host_path(prometheus, flags["--config.file"])
    assert path is not None and path.is_file()
    return yaml.safe_load(path.read_text()), path


def test_prometheus_scrapes_the_engine_and_loads_the_shipped_rules(services, monkeypatch, tmp_path):
    config, path = _prometheus_config(services)
    port = engine_settings(services, monkeypatch).metrics.port
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    engine_jobs = [job for name, job in jobs.items() if re.fullmatch("touchline.*", name)]
    assert len(engine_jobs) == 1, "one scrape job named touchline... (TouchlineEngineDown matches on it)"
    targets = [t for group in engine_jobs[0]["static_configs"] for t in group["targets"]]
    assert targets == [f"engine:{port}"]
    rule_files = [host_path(services["prometheus"], f) for f in config["rule_files"]]
    assert rule_files == [RULES.resolve()]
    # promtool checks the configuration and the rules it loads, with the mounts resolved
    local = dict(config, rule_files=[str(f) for f in rule_files])
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(local))
    done = subprocess.run(["promtool", "check", "config", str(checked)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Checking {RULES.resolve()}" in done.stdout and "rules found" in done.stdout, done.stdout


def test_grafana_provisions_the_prometheus_service_and_the_shipped_dashboard(services):
    grafana = services["grafana"]
    provisioning = host_path(grafana, "/etc/grafana/provisioning")
    assert provisioning is not None and provisioning.is_dir()
    sources = [s for f in (provisioning / "datasources").glob("*.yaml")
               for s in yaml.safe_load(f.read_text())["datasources"]]
    assert len(sources) == 1 and sources[0]["type"] == "prometheus" and sources[0]["isDefault"]
    url = urlsplit(sources[0]["url"])
    assert url.hostname == "prometheus" and url.hostname in services
    listen = [a for a in services["prometheus"]["command"] if a.startswith("--web.listen-address=")]
    assert url.port == (int(listen[0].rsplit(":", 1)[1]) if listen else 9090)
    providers = [p for f in (provisioning / "dashboards").glob("*.yaml")
                 for p in yaml.safe_load(f.read_text())["providers"]]
    assert len(providers) == 1 and providers[0]["type"] == "file"
    folder = host_path(grafana, providers[0]["options"]["path"])
    assert folder is not None and (folder / DASHBOARD.name).resolve() == DASHBOARD.resolve()
    home = host_path(grafana, grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home is not None and home.resolve() == DASHBOARD.resolve()
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == SECRETS["GRAFANA_ADMIN_PASSWORD"]


def test_interpolation_reads_compose_syntax():
    assert interpolate("${A:-x}-${B-y}-$C-$$D", {"B": "", "C": "c"}) == "x--c-$D"
    assert Mount("./a", "/b", True).is_bind and not Mount("vol", "/b", False).is_bind


# -------------------------------------------------------------------------- Dockerfile
def test_dockerfile_copies_files_that_exist_and_the_context_lets_in():
    stages = dockerfile_stages()
    assert [s.name for s in stages] == ["deps", "build", "runtime"]
    patterns = dockerignore_patterns()
    for stage in stages:
        for source in copy_sources(stage):
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert not dockerignored(source, patterns), f"COPY {source}: .dockerignore keeps it out"
    # the dependency layer comes before any source: only the lock is copied into it
    assert copy_sources(stages[0]) == ["requirements.lock"]
    assert any("--require-hashes" in run and "requirements.lock" in run for run in stages[0].all("RUN"))
    # the package's own top-level folders (pyproject's package-dir) all reach the build
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    assert set(package_dirs.values()) <= set(copy_sources(stages[1]))
    assert "examples" in copy_sources(stages[2])
    for ignored in (".venv/bin/python", "touchline-out/decisions.jsonl", "deploy/.env", ".git/HEAD",
                    "touchline/__pycache__/cli.cpython-311.pyc"):
        assert dockerignored(ignored, patterns), ignored


def test_dockerfile_command_parses_with_the_cli_and_its_settings_load(monkeypatch, tmp_path):
    runtime = dockerfile_stages()[-1]
    entrypoint, cmd = exec_form(runtime.all("ENTRYPOINT")[-1]), exec_form(runtime.all("CMD")[-1])
    assert entrypoint == ["touchline"]
    args = cli._parser().parse_args(cmd)
    assert args.command == "run" and args.quiet
    for key in [k for k in os.environ if k.startswith("TOUCHLINE_")]:
        monkeypatch.delenv(key)
    env = runtime_env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(args.config, cli._overrides(args))
    assert str(settings.output.dir) in runtime.all("VOLUME")
    assert settings.metrics.host == "0.0.0.0" and settings.logging.format == "json"
    assert runtime.all("EXPOSE") == [str(settings.metrics.port)]
    health = " ".join(runtime.all("HEALTHCHECK"))
    assert f"127.0.0.1:{settings.metrics.port}/healthz" in health
    # the working directory is where examples/ is copied, so the README's paths work
    workdir = runtime.all("WORKDIR")[-1]
    assert "examples ./examples" in runtime.all("COPY") and workdir == "/app"


# ---------------------------------------------------------------------------- the lock
def lock_pins() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of requirements.lock."""
    text = LOCK.read_text().replace("\\\n", " ")
    pins = {}
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})*)\s*", line)
        assert m, f"requirements.lock: {line[:80]!r} is not name==version --hash=..."
        pins[canonicalize_name(m.group(1))] = (m.group(2), re.findall(r"sha256:([0-9a-f]{64})", m.group(3)))
    return pins


def test_lock_pins_every_runtime_dependency_with_hashes_and_not_the_report_extra():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = lock_pins()
    assert all(hashes for _, hashes in pins.values()), "every pin needs its hashes (pip --require-hashes)"
    required = [Requirement(r) for r in pyproject["project"]["dependencies"]]
    required += [Requirement(r) for r in pyproject["build-system"]["requires"]]
    for req in required:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in requirements.lock: regenerate it (README, Docker)"
        assert req.specifier.contains(pins[name][0], prereleases=True), \
            f"requirements.lock pins {name}=={pins[name][0]}, pyproject asks {req}: regenerate it"
        for extra in req.extras:  # redis[hiredis]: the extra's packages are locked too
            assert extra in pins, f"{req}: {extra} is not in requirements.lock"
    extras = pyproject["project"]["optional-dependencies"]
    assert [Requirement(r).name for r in extras["report"]] == ["matplotlib"]
    assert "touchline[report]" in extras["test"], "the tests and README command 2 need the report extra"
    for only_optional in ("matplotlib", "pytest", "mypy", "ruff"):
        assert only_optional not in pins, f"{only_optional} is not a runtime dependency: keep it out of the image"


def test_lock_records_the_documented_command_that_made_it():
    header = LOCK.read_text().splitlines()[:3]
    command = next(line.strip("# ").strip() for line in header if "pip compile" in line)
    assert command.startswith("uv pip compile pyproject.toml deploy/build-requirements.in --generate-hashes")
    assert command in (ROOT / "README.md").read_text(), "README does not show how the lock is regenerated"
    build = [Requirement(r).name for r in (DEPLOY / "build-requirements.in").read_text().splitlines()
             if r.strip() and not r.startswith("#")]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert build == [Requirement(r).name for r in pyproject["build-system"]["requires"]]


# --------------------------------------------------------------------- the slim runtime
def test_report_without_matplotlib_is_one_line_naming_the_extra(tmp_path):
    """The engine image has no matplotlib: ``touchline report`` says which extra brings it."""
    code = ("import sys; sys.modules['matplotlib'] = None; from touchline.cli import main; "
            f"sys.exit(main(['report', '--out', {str(tmp_path)!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "report" in lines[0] and 'pip install "touchline[report]"' in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_the_engine_imports_no_plotting_library(tmp_path):
    """A run never imports matplotlib (so the image can leave it out)."""
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from touchline.cli import main\n"
            "sys.exit(main(['run', '--contacts', '50', '--days', '2', '--no-metrics', '--quiet', '--out', 'out']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "summary.json").is_file()


# ------------------------------------------------------------------------------ README
def readme_headings(text: str) -> list[tuple[int, str, str]]:
    """(level, title, anchor) of every heading outside code fences."""
    heads, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"(#{1,6})\s+(.*?)\s*$", line)
        if m:
            heads.append((len(m.group(1)), m.group(2)))
    return [(level, title, anchor) for (level, title), anchor in zip(heads, markdown_anchors(text))]


def test_readme_opens_with_the_two_commands_ci_runs_then_its_contents():
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.DOTALL)
    assert first_block is not None
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    commands = [ci[i + 1] for i, line in enumerate(ci) if line.startswith('echo "== README command')]
    assert len(commands) == 2 and first_block.group(1).splitlines() == commands
    contents = text.index("## Contents")
    assert first_block.end() < contents < text.index("## Usage"), "the contents come after the two commands"


def test_readme_contents_list_every_section_and_every_link_resolves():
    text = (ROOT / "README.md").read_text()
    heads = [(level, title, anchor) for level, title, anchor in readme_headings(text) if title != "Contents"]
    start = text.index("## Contents")
    toc = text[start:text.index("\n## ", start + 1)]
    listed = re.findall(r"^( *)- \[(.+?)\]\(#([^)]+)\)$", toc, re.MULTILINE)
    assert [(2 + len(indent) // 2, title, anchor) for indent, title, anchor in listed] == \
        [h for h in heads if h[0] in (2, 3)], "README contents and sections differ"
    anchors = {anchor for _, _, anchor in readme_headings(text)}
    for link in re.findall(r"\]\(#([^)]+)\)", text):
        assert link in anchors, f"README links #{link}, which is no heading"
    for path in re.findall(r"\]\((?!#|https?:)([^)#]+)", text):
        assert (ROOT / path).exists(), f"README links {path}, which does not exist"
