"""`make package`: the archive every function deploys is complete and starts.

The archive is unpacked into an empty folder, its requirements.txt installed
into a new virtual environment (no package from the project's venv, no editable
install: only what Cloud Functions would install), and each entry point is
served by functions-framework from the unpacked main.py.
"""

from __future__ import annotations

import ast
import base64
import importlib.metadata as metadata
import json
import os
import socket
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import httpx
import pytest
import yaml
from packaging.requirements import Requirement

from tests.infra import tfconfig
from tests.infra.wheelhouse import WHEELHOUSE

REPO = tfconfig.REPO
PACKAGE = REPO / "tools" / "package.py"
ENTRY_POINTS = ("api", "intake", "render", "dead_letter", "notifier")


def build(output: Path) -> Path:
    run = subprocess.run([sys.executable, str(PACKAGE), "--output", str(output)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return output


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("package") / "function-source.zip")


def requirements(archive: Path) -> dict[str, str]:
    with zipfile.ZipFile(archive) as zf:
        lines = zf.read("requirements.txt").decode().splitlines()
    pins = [line for line in lines if line and not line.startswith("#")]
    assert all("==" in p for p in pins), pins
    return dict(p.split("==", 1) for p in pins)


def test_archive_is_deterministic(archive: Path, tmp_path: Path) -> None:
    assert build(tmp_path / "again.zip").read_bytes() == archive.read_bytes()


def test_archive_layout(archive: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        assert zf.read("main.py") == (REPO / "functions" / "main.py").read_bytes()
        assert zf.read("backends.yaml") == (REPO / "backends.yaml").read_bytes()
    assert {"main.py", "backends.yaml", "requirements.txt", "aiprod/__init__.py",
            "aiprod/http/entrypoints.py", "aiprod/wiring/config.py"} <= set(names)
    assert ("monitoring.yaml" in names) == (REPO / "monitoring.yaml").exists()
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert names == sorted(names)
    # The deploy boundary is the package boundary: all of aiprod, nothing else.
    package = REPO / "shared" / "aiprod"
    shipped = {n.removeprefix("aiprod/") for n in names if n.startswith("aiprod/")}
    assert shipped == {p.relative_to(package).as_posix() for p in package.rglob("*")
                       if p.is_file() and "__pycache__" not in p.parts}
    assert set(names) - {f"aiprod/{n}" for n in shipped} <= {
        "main.py", "backends.yaml", "monitoring.yaml", "requirements.txt"}


def test_the_production_package_never_imports_the_dev_package() -> None:
    """Checked on the source too, so the error names the line (the archive test below
    would only fail with an ImportError)."""
    offenders = []
    for path in sorted((REPO / "shared" / "aiprod").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names
                          if n.split(".")[0] == "aiprod_dev"]
    assert not offenders


def test_requirements_are_the_runtime_dependencies_pinned(archive: Path) -> None:
    pins = requirements(archive)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:  # every direct dependency, at its pinned version
        name, version = spec.split("==")
        assert pins[name.lower()] == version, spec
    constraints = dict(line.lower().replace("_", "-").split("==")
                       for line in (REPO / "constraints.txt").read_text().split())
    for name, version in pins.items():
        assert constraints[name] == version, name
    # Nothing only the extras (cli, local, dev) need is deployed: a name listed in an
    # extra ships only if something deployed requires it too (click: functions-framework).
    extras = {Requirement(spec).name.lower() for specs in project["optional-dependencies"].values()
              for spec in specs if not spec.startswith("aiprod")}
    required_by_deployed = {Requirement(line).name.lower() for name in pins
                            for line in metadata.distribution(name).requires or []
                            if "extra ==" not in line}
    assert "rich" in extras  # the CLI's own dependency, never deployed
    assert not (extras & set(pins)) - required_by_deployed, "extras must not be deployed"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def push_body(payload: bytes, attributes: dict[str, str] | None = None) -> dict[str, object]:
    """What a Pub/Sub push subscription POSTs (no CloudEvent headers)."""
    return {"subscription": "projects/p/subscriptions/s",
            "message": {"data": base64.b64encode(payload).decode(), "messageId": "1",
                        "publishTime": "2026-11-26T00:00:00Z", "attributes": attributes or {}}}


@pytest.fixture(scope="module")
def installed(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The archive unpacked into an empty folder, with a clean venv beside it holding
    requirements.txt's packages and nothing else (not even pip: this venv's pip
    installs into it with --python)."""
    root = tmp_path_factory.mktemp("unpacked")
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(root / "src")
    wheels = WHEELHOUSE.wheels_for((root / "src" / "requirements.txt").read_bytes())
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", "--without-pip", str(root / "venv")],
                   check=True, env=env, timeout=120)
    # The wheels pip download resolved from the index (tests/infra/wheelhouse.py), and
    # no bytecode compiled ahead: what imports is compiled when it is imported.
    pip = subprocess.run(
        [*clean_pip(root), "install", "--quiet", "--no-input", "--no-compile", "--no-index",
         "--find-links", str(wheels), "-r", str(root / "src" / "requirements.txt")],
        env=env, capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    return root


def clean_pip(installed: Path) -> list[str]:
    """pip, acting on the clean venv."""
    return [sys.executable, "-m", "pip", "--disable-pip-version-check",
            "--python", str(installed / "venv" / "bin" / "python")]


def test_requirements_are_complete_and_consistent(archive: Path, installed: Path) -> None:
    check = subprocess.run([*clean_pip(installed), "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    freeze = subprocess.run([*clean_pip(installed), "list", "--format=json"],
                            capture_output=True, text=True, check=True)
    got = {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(freeze.stdout)}
    got.pop("pip", None)
    got.pop("setuptools", None)
    # pip installed nothing that requirements.txt does not pin: the pins are the closure.
    assert got == requirements(archive)


def test_every_module_of_the_archive_imports_with_only_its_requirements(
        installed: Path) -> None:
    """In the clean venv (requirements.txt alone), from the unpacked folder: a module that
    needed the CLI's, the local stack's or the dev extras' packages would fail here."""
    script = ("import sys; sys.path.insert(0, '.')\n"
              "import pkgutil, importlib, aiprod\n"
              "names = [m.name for m in pkgutil.walk_packages(aiprod.__path__, 'aiprod.')]\n"
              "for name in names: importlib.import_module(name)\n"
              "import main\n"
              "print(len(names))\n")
    env = {"PATH": f"{installed / 'venv' / 'bin'}:/usr/bin:/bin", "HOME": str(installed),
           "GOOGLE_CLOUD_PROJECT": "aiprod-package-test"}
    run = subprocess.run([str(installed / "venv" / "bin" / "python"), "-I", "-c", script],
                         cwd=installed / "src", env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert int(run.stdout.split()[-1]) > 50  # every module, not an empty package


def test_each_entry_point_starts_from_the_archive(installed: Path) -> None:
    backend = yaml.safe_load((REPO / "backends.yaml").read_text())["backends"][0]["name"]
    processes: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    logs = installed / "logs"
    logs.mkdir(exist_ok=True)
    try:
        for target in ENTRY_POINTS:
            port = free_port()
            env = {
                "PATH": f"{installed / 'venv' / 'bin'}:/usr/bin:/bin",
                "HOME": str(installed),
                "GOOGLE_CLOUD_PROJECT": "aiprod-package-test",
                # Clients built at start-up stay offline: emulator hosts nobody listens on.
                "FIRESTORE_EMULATOR_HOST": "127.0.0.1:9",
                "PUBSUB_EMULATOR_HOST": "127.0.0.1:9",
                "AIPROD_OUTPUT_URI": f"file://{installed / 'out'}",
                **({"BACKEND": backend} if target == "render" else {}),
            }
            log = (logs / f"{target}.log").open("wb")
            processes[target] = (subprocess.Popen(
                [str(installed / "venv" / "bin" / "functions-framework"), f"--target={target}",
                 "--source=main.py", "--host=127.0.0.1", f"--port={port}"],
                cwd=installed / "src", env=env, stdout=log, stderr=subprocess.STDOUT), port)

        def call(target: str, method: str, path: str, body: object = None) -> httpx.Response:
            process, port = processes[target]
            deadline = time.monotonic() + 60
            while True:
                try:
                    return httpx.request(method, f"http://127.0.0.1:{port}{path}", json=body,
                                         timeout=10)
                except httpx.TransportError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"{target} did not start:\n"
                                    f"{(logs / f'{target}.log').read_text()[-3000:]}")
                    time.sleep(0.2)

        health = call("api", "GET", "/healthz")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        # A render message nobody can read is dropped (acknowledged) without I/O.
        assert call("render", "POST", f"/projects/p/topics/render-{backend}",
                    push_body(b"not json")).status_code == 200
        # A dead-lettered webhook event is logged and acknowledged without I/O (an
        # intake dead letter is answered on job-events: Pub/Sub, not reachable here).
        assert call("dead_letter", "POST", "/projects/p/topics/job-events-dead-letter",
                    push_body(b'{"event_id": "job_1:job.succeeded", "type": "job.succeeded"}')
                    ).status_code == 200
        # The OpenAPI document is generated from the models inside the archive too.
        document = call("api", "GET", "/v1/openapi.json")
        assert (document.status_code, document.json()["openapi"]) == (200, "3.1.0")
        # A job event that is not terminal sends no webhook: acknowledged without I/O.
        assert call("notifier", "POST", "/projects/p/topics/job-events", push_body(
            b'{"event_id": "job_1:job.queued", "type": "job.queued"}')).status_code == 200
        # intake would answer on job-events (Pub/Sub): check it serves HTTP at all.
        assert call("intake", "POST", "/", {"not": "a push body"}).status_code < 600
    finally:
        for process, _ in processes.values():
            process.terminate()
        for process, _ in processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
