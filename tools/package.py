"""Build the source archive every Cloud Function deploys: `make package`.

The archive holds, at its root:
- main.py           the entry points (functions/main.py);
- aiprod/           the production package (shared/aiprod), whole: the simulators,
                    local stack and CLI live in another package (shared/aiprod_dev)
                    and never ship, by package boundary rather than a list;
- backends.yaml     the catalog (the code looks for it beside main.py);
- monitoring.yaml   if the repository has one;
- requirements.txt  the runtime dependencies: [project].dependencies from
                    pyproject.toml and everything they need, each pinned to its
                    version in constraints.txt (never the `cli`/`local`/`dev` extras).

The same inputs give the same bytes (sorted entries, fixed timestamps and
modes), so the archive's hash, and with it Terraform's object name, changes
only when the content does.

The dependency closure is read from the metadata of the packages installed in
the running environment (the project's venv, installed from constraints.txt),
with environment markers evaluated for the Cloud Functions runtime.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import sys
import tomllib
import zipfile
from collections.abc import Iterable
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
# The Cloud Functions runtime the archive is built for (terraform var.python_runtime).
TARGET_PYTHON = "3.12"
EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry


class PackagingError(Exception):
    pass


def target_environment(extra: str = "") -> dict[str, str]:
    return {
        "python_version": TARGET_PYTHON, "python_full_version": f"{TARGET_PYTHON}.0",
        "implementation_name": "cpython", "implementation_version": f"{TARGET_PYTHON}.0",
        "platform_python_implementation": "CPython", "os_name": "posix",
        "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
        "platform_release": "", "platform_version": "", "extra": extra,
    }


def read_constraints(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        versions = [s.version for s in requirement.specifier if s.operator == "=="]
        if len(versions) != 1:
            raise PackagingError(f"constraints.txt: {line!r} is not pinned with ==")
        pins[canonicalize_name(requirement.name)] = versions[0]
    return pins


def _applies(marker: Marker | None, extras: Iterable[str]) -> bool:
    if marker is None:
        return True
    return any(marker.evaluate(target_environment(extra)) for extra in ("", *extras))


def runtime_requirements(pyproject: Path, constraints: Path) -> list[str]:
    """`name==version` for every runtime dependency, direct or not, sorted."""
    pins = read_constraints(constraints)
    roots = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pending = [Requirement(r) for r in roots]
    seen: dict[str, set[str]] = {}
    while pending:
        requirement = pending.pop()
        if not _applies(requirement.marker, ()):
            continue
        name = canonicalize_name(requirement.name)
        extras = set(requirement.extras)
        if name in seen and extras <= seen[name]:
            continue
        seen.setdefault(name, set()).update(extras)
        if name not in pins:
            raise PackagingError(f"{requirement.name} is needed at run time but constraints.txt "
                                 "does not pin it")
        if not requirement.specifier.contains(pins[name], prereleases=True):
            raise PackagingError(f"{requirement} does not admit the pinned {pins[name]}")
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError as error:
            raise PackagingError(f"{requirement.name} is not installed here: run `make` "
                                 "targets from the project's venv") from error
        if canonicalize_name(dist.version) != canonicalize_name(pins[name]):
            raise PackagingError(f"{requirement.name} {dist.version} is installed but "
                                 f"constraints.txt pins {pins[name]}: reinstall the venv")
        for line in dist.requires or []:
            nested = Requirement(line)
            if _applies(nested.marker, seen[name]):
                pending.append(nested)
    return [f"{name}=={pins[name]}" for name in sorted(seen)]


def archive_members(repo: Path) -> dict[str, bytes]:
    members: dict[str, bytes] = {"main.py": (repo / "functions" / "main.py").read_bytes(),
                                 "backends.yaml": (repo / "backends.yaml").read_bytes()}
    if (repo / "monitoring.yaml").exists():
        members["monitoring.yaml"] = (repo / "monitoring.yaml").read_bytes()
    package = repo / "shared" / "aiprod"
    for path in sorted(package.rglob("*")):
        relative = path.relative_to(package)
        if not path.is_file() or "__pycache__" in relative.parts or path.suffix == ".pyc":
            continue
        members[f"aiprod/{relative.as_posix()}"] = path.read_bytes()
    requirements = runtime_requirements(repo / "pyproject.toml", repo / "constraints.txt")
    header = ("# Generated by tools/package.py from pyproject.toml [project].dependencies,\n"
              "# pinned to constraints.txt. Do not edit.\n")
    members["requirements.txt"] = (header + "\n".join(requirements) + "\n").encode()
    return members


def write_archive(members: dict[str, bytes], output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_suffix(".partial")
    with zipfile.ZipFile(partial, "w") as archive:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
            info.create_system = 3  # Unix, whatever the building machine
            archive.writestr(info, members[name], compresslevel=9)
    partial.replace(output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "dist" / "function-source.zip")
    args = parser.parse_args(argv)
    try:
        members = archive_members(REPO)
    except PackagingError as error:
        print(f"package: {error}", file=sys.stderr)
        return 1
    write_archive(members, args.output)
    print(f"{args.output}: {len(members)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
