"""The deployment: docker-compose.yml, docker/Dockerfile.*, deploy/registry.toml, CI.

No Docker engine is needed: these read the files and check that they agree
with each other and with the package (its console script, CLI commands, torch
pins and registry loader). ``docker compose config`` and hadolint, which do
need their binaries, are in docker/README.md.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
REGISTRY = ROOT / "deploy" / "registry.toml"
DOCKERIGNORE = ROOT / ".dockerignore"
APP_SERVICES = {"api": "serve", "worker": "worker"}
"""Compose services that run the package, and the ``krypton`` subcommand each runs."""


# --- helpers -----------------------------------------------------------------


@dataclass
class Stage:
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        values = [value for key, value in self.instructions if key == keyword]
        return values[-1] if values else None

    def all(self, keyword: str) -> list[str]:
        return [value for key, value in self.instructions if key == keyword]


@dataclass
class Dockerfile:
    args: dict[str, str]
    """ARGs declared in any stage, with their defaults."""
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse_dockerfile(path: Path) -> Dockerfile:
    """Instructions per stage, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comment lines inside a continuation are dropped too, as Docker does
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path.name}: dangling line continuation"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, value = line.partition(" ")
        keyword, value = keyword.upper(), value.strip()
        if keyword == "ARG":
            name, _, default = value.partition("=")
            args[name] = default
        if keyword == "FROM":
            stages.append(Stage(base=value))
        elif stages:
            stages[-1].instructions.append((keyword, value))
    assert stages, f"{path.name}: no FROM"
    return Dockerfile(args=args, stages=stages)


def exec_form(value: str) -> list[str]:
    """A CMD/ENTRYPOINT/HEALTHCHECK CMD in exec (JSON) form; shell form is refused."""
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(word, str) for word in parsed), value
    return parsed


def healthcheck_command(value: str) -> list[str]:
    """The command of ``HEALTHCHECK [--options] CMD [...]``."""
    options, marker, command = value.partition("CMD ")
    assert marker, f"HEALTHCHECK without CMD: {value}"
    assert all(word.startswith("--") for word in options.split()), value
    return exec_form(command)


_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with every variable unset: what a fresh checkout gets."""
    return _VARIABLE.sub(lambda match: match.group(2) or "", value)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(key): interpolate(str(value)) for key, value in env.items()}


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool


def mounts(service: dict[str, Any]) -> list[Mount]:
    found = []
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            found.append(Mount(str(entry["source"]), str(entry["target"]),
                               bool(entry.get("read_only", False))))
            continue
        source, target, *mode = interpolate(entry).split(":")
        found.append(Mount(source, target, "ro" in ",".join(mode).split(",")))
    return found


def mount_at(service: dict[str, Any], target: str) -> Mount:
    matches = [mount for mount in mounts(service) if mount.target == target]
    assert len(matches) == 1, f"expected one mount at {target}, got {matches}"
    return matches[0]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


def dockerfile_of(service: dict[str, Any]) -> Path:
    build = service["build"]
    context = ROOT / str(build.get("context", "."))
    return context / str(build.get("dockerfile", "Dockerfile"))


@pytest.fixture(scope="module")
def dockerfiles(services: dict[str, dict[str, Any]]) -> dict[str, Dockerfile]:
    return {name: parse_dockerfile(dockerfile_of(service))
            for name, service in services.items() if "build" in service}


@pytest.fixture(scope="module")
def registry() -> dict[str, Any]:
    return tomllib.loads(REGISTRY.read_text(encoding="utf-8"))


# --- docker-compose.yml --------------------------------------------------------


def test_compose_has_redis_api_and_worker(services: dict[str, dict[str, Any]]) -> None:
    assert {"redis", "api", "worker"} <= set(services)
    assert services["redis"]["image"].startswith("redis:")


def test_every_build_names_an_existing_dockerfile_in_the_repository(
        services: dict[str, dict[str, Any]]) -> None:
    built = {name: service for name, service in services.items() if "build" in service}
    assert set(APP_SERVICES) <= set(built)
    for name, service in built.items():
        path = dockerfile_of(service)
        assert path.is_file(), f"{name}: {path} does not exist"
        assert (ROOT / service["build"].get("context", ".")).resolve() == ROOT, \
            f"{name}: the Dockerfiles COPY from the repository root"


def test_named_volumes_are_declared(compose: dict[str, Any],
                                    services: dict[str, dict[str, Any]]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for mount in mounts(service):
            if not mount.source.startswith((".", "/", "~")):
                assert mount.source in declared, f"{name}: volume {mount.source!r} undeclared"


def test_api_and_worker_use_the_redis_service(services: dict[str, dict[str, Any]]) -> None:
    redis_service = services["redis"]
    for name in APP_SERVICES:
        url = urlsplit(environment(services[name])["KRYPTON_REDIS_URL"])
        assert url.scheme == "redis", name
        assert url.hostname == "redis" and url.hostname in services, name
        assert url.port == 6379, name
        depends = services[name]["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy", name
    assert "ports" not in redis_service, "Redis holds patient images: do not publish it"


def test_api_publishes_the_port_its_image_serves(
        services: dict[str, dict[str, Any]], dockerfiles: dict[str, Dockerfile]) -> None:
    published = [interpolate(str(port)) for port in services["api"]["ports"]]
    assert any(port.split(":")[-1] == "8000" for port in published), published
    final = dockerfiles["api"].final
    assert final.last("EXPOSE") == "8000"
    command = exec_form(final.last("CMD") or "[]")
    assert command[command.index("--port") + 1] == "8000"
    assert command[command.index("--host") + 1] == "0.0.0.0"


def test_worker_reserves_one_nvidia_gpu_and_runs_on_cuda(
        services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    gpus = [device for device in devices
            if device.get("driver") == "nvidia" and "gpu" in device.get("capabilities", [])]
    assert len(gpus) == 1, devices
    assert gpus[0].get("count") == 1 or len(gpus[0].get("device_ids", [])) == 1
    assert environment(worker)["KRYPTON_DEVICE"] == "cuda"
    assert environment(services["api"])["KRYPTON_DEVICE"] == "cpu"


def test_every_service_has_a_healthcheck(services: dict[str, dict[str, Any]],
                                         dockerfiles: dict[str, Dockerfile]) -> None:
    for name, service in services.items():
        check = service.get("healthcheck")
        image_check = name in dockerfiles and dockerfiles[name].final.last("HEALTHCHECK")
        assert check or image_check, f"{name} has no healthcheck"
        if check:
            assert not check.get("disable", False), name
            assert check["test"][0] in ("CMD", "CMD-SHELL"), name


def test_compose_healthchecks_match_the_images(services: dict[str, dict[str, Any]],
                                               dockerfiles: dict[str, Dockerfile]) -> None:
    for name in APP_SERVICES:
        image_check = dockerfiles[name].final.last("HEALTHCHECK")
        assert image_check, f"{name}: the image needs a HEALTHCHECK for use without compose"
        in_image = healthcheck_command(image_check)
        in_compose = services[name]["healthcheck"]["test"]
        assert in_compose == ["CMD", *in_image], f"{name}: compose and image checks drifted"
    api_check = " ".join(services["api"]["healthcheck"]["test"])
    assert "127.0.0.1:8000/healthz" in api_check
    worker_check = " ".join(services["worker"]["healthcheck"]["test"])
    assert "KRYPTON_REDIS_URL" in worker_check and ".ping()" in worker_check


def test_api_and_worker_read_the_same_registry(services: dict[str, dict[str, Any]]) -> None:
    for name in APP_SERVICES:
        service = services[name]
        registry_mount = mount_at(service, environment(service)["KRYPTON_REGISTRY"])
        assert registry_mount.read_only, name
        assert (ROOT / registry_mount.source).resolve() == REGISTRY, name


def test_api_requires_keys_mounted_read_only(services: dict[str, dict[str, Any]]) -> None:
    keys_file = Path(environment(services["api"])["KRYPTON_KEYS_FILE"])
    mount = mount_at(services["api"], str(keys_file.parent))
    assert mount.read_only and (ROOT / mount.source).is_dir()


def test_only_workers_mount_the_checkpoints(services: dict[str, dict[str, Any]]) -> None:
    assert mount_at(services["worker"], "/models").read_only
    assert "/models" not in {m.target for m in mounts(services["api"])}, (
        "the api never reads checkpoints")


def test_redis_is_the_only_state_api_and_workers_share(
        services: dict[str, dict[str, Any]]) -> None:
    writable = {name: [m.target for m in mounts(services[name]) if not m.read_only]
                for name in APP_SERVICES}
    assert writable == {name: [] for name in APP_SERVICES}


# --- Dockerfiles -----------------------------------------------------------------


def test_commands_are_the_console_script_and_its_service_subcommands(
        dockerfiles: dict[str, Dockerfile]) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name, subcommand in APP_SERVICES.items():
        command = exec_form(dockerfiles[name].final.last("CMD") or "[]")
        assert command[0] in scripts, f"{name}: {command[0]!r} is not a console script"
        assert command[1] == subcommand, name


def test_the_cli_has_the_subcommands_the_images_run(dockerfiles: dict[str, Dockerfile]) -> None:
    from krypton.cli import app

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    for name in APP_SERVICES:
        words = exec_form(dockerfiles[name].final.last("CMD") or "[]")[1:]
        command = commands.get(words[0])
        assert command is not None, f"{name} runs `krypton {words[0]}`, which does not exist"
        known = {option for param in command.params for option in param.opts}
        flags = {word for word in words[1:] if word.startswith("-")}
        assert flags <= known, f"{name}: unknown options {flags - known}"


def test_images_run_as_a_non_root_user(dockerfiles: dict[str, Dockerfile]) -> None:
    uids = set()
    for name, dockerfile in dockerfiles.items():
        user = dockerfile.final.last("USER")
        assert user, f"{name} runs as root"
        uid = user.split(":")[0]
        assert uid not in ("root", "0"), name
        uids.add(uid)
    assert len(uids) == 1, f"one uid for both images (they share a volume): {uids}"


def test_images_pin_the_torch_of_pyproject(dockerfiles: dict[str, Dockerfile]) -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins: dict[str, str] = {}
    for dependency in dependencies:
        if match := re.fullmatch(r"(torch|torchvision)==(\S+)", dependency):
            pins[match[1]] = match[2]
    assert set(pins) == {"torch", "torchvision"}, dependencies
    for name, dockerfile in dockerfiles.items():
        assert dockerfile.args.get("TORCH_VERSION") == pins["torch"], name
        assert dockerfile.args.get("TORCHVISION_VERSION") == pins["torchvision"], name


def test_worker_image_is_cuda_and_api_image_is_python_slim(
        dockerfiles: dict[str, Dockerfile]) -> None:
    worker, api = dockerfiles["worker"], dockerfiles["api"]
    assert worker.final.base == "${CUDA_IMAGE}"
    assert worker.args["CUDA_IMAGE"].startswith("nvidia/cuda:")
    assert api.final.base == "${PYTHON_IMAGE}"
    assert re.fullmatch(r"python:3\.1[1-9]-slim.*", api.args["PYTHON_IMAGE"])
    assert "KRYPTON_DEVICE=cuda" in " ".join(worker.final.all("ENV"))


def test_build_context_lets_in_what_the_dockerfiles_copy(
        dockerfiles: dict[str, Dockerfile]) -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", ".dockerignore is an allow-list"
    allowed = {pattern[1:] for pattern in patterns if pattern.startswith("!")}
    for name, dockerfile in dockerfiles.items():
        for stage in dockerfile.stages:
            for copy in stage.all("COPY"):
                words = copy.split()
                if any(word.startswith("--from") for word in words):
                    continue
                sources = [word for word in words[:-1] if not word.startswith("--")]
                for source in sources:
                    assert (ROOT / source).exists(), f"{name}: COPY {source}: no such path"
                    assert source.rstrip("/") in allowed, f"{name}: {source} is dockerignored"
    # pyproject.toml names README.md as the readme: the build fails without it.
    assert "README.md" in allowed


# --- deploy/registry.toml ----------------------------------------------------------


def test_registry_datasets_name_deployed_models(registry: dict[str, Any]) -> None:
    names = [model["name"] for model in registry["models"]]
    assert names and len(names) == len(set(names)), names
    for model in registry["models"]:
        assert model["labels"], model["name"]
        checkpoint = model.get("checkpoint")
        if checkpoint is not None:
            assert Path(checkpoint).is_absolute() and checkpoint.startswith("/models/"), \
                f"{model['name']}: checkpoints live on the /models volume"
    for dataset in registry.get("datasets", []):
        assert dataset["model"] in names, f"dataset {dataset['name']} names an unknown model"


def test_registry_loads_with_the_service_loader() -> None:
    from krypton.models import list_models
    from krypton.models.deployment import load_deployment

    deployment = load_deployment(REGISTRY)
    assert {model.architecture for model in deployment.models.values()} <= set(list_models())
    assert deployment.datasets_dir == Path("/var/lib/krypton/datasets")


# --- deploy/demo.toml --------------------------------------------------------


def test_demo_registry_serves_what_krypton_demo_train_writes() -> None:
    from krypton.demo import LABELS, demo_checkpoint
    from krypton.models.deployment import load_deployment

    deployment = load_deployment(ROOT / "deploy" / "demo.toml")
    for model in deployment.models.values():
        assert model.labels == LABELS
        assert model.checkpoint is not None
        expected = demo_checkpoint(ROOT / "checkpoints", model.architecture)
        assert Path(model.checkpoint).resolve() == expected.resolve()
    assert {m.architecture for m in deployment.models.values()} == {
        "resnet18", "vgg16", "inception_v3"}


# --- README and CI -----------------------------------------------------------------


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci_command.endswith(".venv/bin/python -m pytest")
    assert f"\n{ci_command}\n" in (ROOT / "README.md").read_text()


def test_compose_redis_persists_and_bounds_its_memory_without_evicting(
        services: dict[str, dict[str, Any]]) -> None:
    command = services["redis"]["command"]
    options = dict(zip(command[1::2], command[2::2], strict=False))
    assert options["--appendonly"] == "yes", "jobs must survive a Redis restart"
    assert options["--maxmemory-policy"] == "noeviction", "eviction would drop jobs silently"
    assert options["--maxmemory"], "the API refuses uploads before Redis reaches it"
