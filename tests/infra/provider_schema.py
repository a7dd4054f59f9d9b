"""The Terraform providers' schemas (google, google-beta, time), offline.

`terraform validate` needs the provider binaries from the Terraform registry,
which are out of reach here. The same schemas ship on PyPI inside the jsii
assemblies of CDK Terrain's prebuilt bindings (`cdktn-provider-google`,
`cdktn-provider-google-beta`, `cdktn-provider-time`): each resource class has a
`<Class>Config` struct whose properties are the resource's arguments, and a
nested block is a property whose type points at another struct. Each class's
documentation links the registry page of the provider version it was generated
from, which is how the version is read.

The google wheels are ~70 MB each (233 MB unpacked, plus the jsii/cdktn runtime
they depend on), so they are not dev dependencies: on first use `pip download
--no-deps` fetches a wheel into a temporary folder, and the few hundred
kilobytes this module needs are distilled into a JSON file in the cache folder
(``$AIPROD_INFRA_CACHE`` or ``~/.cache/aiprod-infra``). Later runs read only
that file.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Source:
    """One provider's schema source: a cdktn wheel on PyPI."""

    name: str  # the provider's local name in required_providers
    source: str  # its registry address
    package: str  # the PyPI distribution
    package_version: str
    provider_version: str  # the provider release those bindings were generated from
    npm: str  # the jsii module name: @cdktn/provider-x
    provider_struct: str  # the provider block's arguments, within the module
    resource_prefix: str  # the provider's resource type prefix: google_, time_

    @property
    def prefix(self) -> str:
        return f"{self.npm}."

    @property
    def jsii_member(self) -> str:
        module = self.package.replace("-", "_")
        return f"{module}/_jsii/{self.npm.split('/')[1]}@{self.package_version}.jsii.tgz"

    @property
    def doc_link(self) -> re.Pattern[str]:
        return re.compile(rf"{re.escape(self.source)}/[\d.]+/docs/(resources|data-sources)/\S+ "
                          rf"({self.resource_prefix}\w+)\}}")

    @property
    def version_link(self) -> re.Pattern[str]:
        return re.compile(rf"{re.escape(self.source)}/(\d+\.\d+\.\d+)/docs")


GOOGLE = Source("google", "hashicorp/google", "cdktn-provider-google", "21.1.0", "8.7.0",
                "@cdktn/provider-google", "provider.GoogleProviderConfig", "google_")
# google-beta: google_project_service_identity exists only there (iam.tf).
GOOGLE_BETA = Source("google-beta", "hashicorp/google-beta", "cdktn-provider-google-beta",
                     "21.1.0", "8.7.0", "@cdktn/provider-google-beta",
                     "provider.GoogleBetaProviderConfig", "google_")
# time: time_sleep between log-based metrics and what uses them (monitoring.tf).
TIME = Source("time", "hashicorp/time", "cdktn-provider-time", "14.0.2", "0.14.2",
              "@cdktn/provider-time", "provider.TimeProviderConfig", "time_")
SOURCES = {s.name: s for s in (GOOGLE, GOOGLE_BETA, TIME)}

# Kept for callers that only know the google provider.
CDKTN_PROVIDER_GOOGLE = GOOGLE.package_version
GOOGLE_PROVIDER = GOOGLE.provider_version
_ARG_ANCHOR = re.compile(r"#(\w+) \w+#\w+\}")
_FORMAT = 3  # bump when distil() changes what it writes


@dataclass(frozen=True)
class Block:
    """One schema level: a resource's top level, or a nested block."""

    attributes: dict[str, bool]  # name -> required
    blocks: dict[str, tuple[bool, str]]  # name -> (required, struct id)


Exports = dict[str, "Exports | None"]  # attribute -> nested attributes (None: a leaf)


@dataclass
class ProviderSchema:
    version: str
    provider: str  # struct id of the provider block's arguments
    resources: dict[str, str]  # google_x -> struct id of its arguments
    data_sources: dict[str, str]
    structs: dict[str, Block] = field(default_factory=dict)
    # What `google_x.name.<path>` may refer to: arguments and computed attributes.
    exports: dict[str, Exports] = field(default_factory=dict)
    data_exports: dict[str, Exports] = field(default_factory=dict)

    def resource(self, kind: str, data: bool = False) -> Block | None:
        table = self.data_sources if data else self.resources
        return self.structs[table[kind]] if kind in table else None

    def struct(self, struct_id: str) -> Block:
        return self.structs[struct_id]


def cache_dir() -> Path:
    configured = os.environ.get("AIPROD_INFRA_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "aiprod-infra"


def load(source: Source = GOOGLE) -> ProviderSchema:
    """The distilled schema, built (and cached) from the wheel on first use."""
    path = cache_dir() / (f"{source.name}-provider-schema-cdktn-{source.package_version}"
                          f"-v{_FORMAT}.json")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        distilled = distil(_read_assembly(_download_wheel(source)), source)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(distilled, sort_keys=True))
        partial.replace(path)
    raw = json.loads(path.read_text())
    return ProviderSchema(
        version=raw["version"],
        provider=raw["provider"],
        resources=raw["resources"],
        data_sources=raw["data_sources"],
        structs={k: Block(v["attributes"], {b: (r, s) for b, (r, s) in v["blocks"].items()})
                 for k, v in raw["structs"].items()},
        exports=raw["exports"],
        data_exports=raw["data_exports"],
    )


def _download_wheel(source: Source) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--disable-pip-version-check", "--dest", tmp,
             f"{source.package}=={source.package_version}"],
            check=True, capture_output=True, text=True, timeout=600,
        )
        (wheel,) = Path(tmp).glob(f"{source.package.replace('-', '_')}-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            return archive.read(source.jsii_member)


def _read_assembly(tgz: bytes) -> dict[str, Any]:
    with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
        member = tar.extractfile("package/.jsii")
        assert member is not None
        assembly: dict[str, Any] = json.load(member)
        return assembly


def _struct_refs(type_ref: dict[str, Any]) -> list[str]:
    """Struct fqns a property type points at: directly, in a union or in a list."""
    refs: list[str] = []
    if "fqn" in type_ref:
        refs.append(type_ref["fqn"])
    for member in type_ref.get("union", {}).get("types", []):
        refs += _struct_refs(member)
    if "collection" in type_ref:
        refs += _struct_refs(type_ref["collection"]["elementtype"])
    return refs


def _argument_name(prop: dict[str, Any]) -> str:
    docs = prop.get("docs", {})
    match = _ARG_ANCHOR.search(docs.get("remarks", "") + " " + docs.get("summary", ""))
    if match:
        return match.group(1)
    return re.sub(r"(?<!^)(?=[A-Z])", "_", prop["name"]).lower()


def _exports(types: dict[str, Any], fqn: str, prefix: str, depth: int = 0) -> dict[str, Any]:
    """Attribute names readable on a resource class or a block's OutputReference."""
    out: dict[str, Any] = {}
    for prop in types[fqn].get("properties", []):
        name = prop["name"]
        if name.endswith("Input") or name in ("tfResourceType", "internalValue", "fqn"):
            continue
        if prop.get("static"):
            continue
        nested: dict[str, Any] | None = None
        for ref in _struct_refs(prop["type"]):
            if not ref.startswith(prefix) or depth > 8:
                continue
            if ref.endswith("List"):  # list of blocks: elements are OutputReferences
                ref = ref[: -len("List")] + "OutputReference"
            if ref.endswith("OutputReference") and ref in types:
                nested = _exports(types, ref, prefix, depth + 1)
        out[re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()] = nested
    return out


def distil(assembly: dict[str, Any], source: Source = GOOGLE) -> dict[str, Any]:
    types: dict[str, Any] = assembly["types"]
    resources: dict[str, str] = {}
    data_sources: dict[str, str] = {}
    exports: dict[str, Any] = {}
    data_exports: dict[str, Any] = {}
    versions: set[str] = set()
    for fqn, spec in types.items():
        summary = spec.get("docs", {}).get("summary", "")
        link = source.doc_link.search(summary)
        if spec.get("kind") != "class" or not link or f"{fqn}Config" not in types:
            continue
        versions.update(source.version_link.findall(summary))
        table = resources if link.group(1) == "resources" else data_sources
        table[link.group(2)] = f"{fqn}Config"
        (exports if table is resources else data_exports)[link.group(2)] = _exports(
            types, fqn, source.prefix)

    provider = f"{source.prefix}{source.provider_struct}"
    structs: dict[str, Any] = {}
    pending = [provider, *resources.values(), *data_sources.values()]
    while pending:
        fqn = pending.pop()
        if fqn in structs:
            continue
        attributes: dict[str, bool] = {}
        blocks: dict[str, tuple[bool, str]] = {}
        for prop in types[fqn].get("properties", []):
            required = not prop.get("optional", False)
            nested = [ref for ref in _struct_refs(prop["type"])
                      if ref.startswith(source.prefix) and types.get(ref, {}).get("datatype")]
            name = _argument_name(prop)
            if nested:
                blocks[name] = (required, nested[0])
                pending.append(nested[0])
            else:
                attributes[name] = required
        structs[fqn] = {"attributes": attributes, "blocks": blocks}
    if len(versions) != 1:
        raise ValueError(f"expected one provider version in the assembly, found {versions}")
    return {"version": versions.pop(), "provider": provider, "resources": resources,
            "data_sources": data_sources, "structs": structs, "exports": exports,
            "data_exports": data_exports}
