"""Reading terraform/ offline: parse it, evaluate its locals, expand its resources.

- Parsing: python-hcl2 (8.x) turns each .tf file into dicts.
- Locals: the files in LOCALS_FILES hold only variables and locals (no resource
  refers to them from there), so Terraform itself evaluates them: they are copied
  into a scratch module beside a copy of backends.yaml, with one output holding
  every local and variable, and `terraform apply` runs there with no provider
  and no network. Variable validations run too.
- Resources: a small evaluator expands each resource's for_each/count with those
  values and evaluates the simple expressions the cross-checks need (references,
  `each`, string templates, conditionals, a few functions). A reference to
  another resource evaluates to a `Ref` naming the instance, so a check can
  follow it. Anything outside that subset raises `Unsupported` instead of
  guessing, and the check that needed it fails.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import hcl2

REPO = Path(__file__).resolve().parents[2]
TERRAFORM_DIR = REPO / "terraform"
# Files that hold only variables and locals; Terraform evaluates them offline.
LOCALS_FILES = ("variables.tf", "topology.tf", "monitoring_spec.tf")
META_ARGUMENTS = {"count", "for_each", "depends_on", "provider", "lifecycle", "provisioner",
                  "connection"}


class Unsupported(Exception):
    """An expression outside what the evaluator understands."""


class TerraformError(Exception):
    pass


def terraform() -> str:
    path = shutil.which("terraform")
    if path is None:
        raise RuntimeError("terraform is not on PATH (expected /usr/local/bin/terraform, 1.11.x)")
    return path


def terraform_env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env.update({"TF_IN_AUTOMATION": "1", "TF_CLI_CONFIG_FILE": "/dev/null",
                "CHECKPOINT_DISABLE": "1"})
    return env


# --- Parsing ----------------------------------------------------------------------

def label(key: str) -> str:
    return key[1:-1] if key.startswith('"') and key.endswith('"') else key


def is_block(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, dict) and v.get("__is_block__")
                                           for v in value) and bool(value)


def attributes(body: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """A block body's entries, without python-hcl2's bookkeeping keys."""
    for key, value in body.items():
        if not key.startswith("__"):
            yield key, value


@dataclass
class Config:
    files: dict[str, dict[str, Any]]
    resources: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    data: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    providers: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    terraform: list[dict[str, Any]] = field(default_factory=list)
    resource_file: dict[tuple[str, str], str] = field(default_factory=dict)


def load_config(directory: Path = TERRAFORM_DIR) -> Config:
    files = {path.name: hcl2.loads(path.read_text()) for path in sorted(directory.glob("*.tf"))}
    config = Config(files=files)
    for name, parsed in files.items():
        for block in parsed.get("resource", []):
            for rtype, named in attributes(block):
                for rname, body in attributes(named):
                    key = (label(rtype), label(rname))
                    if key in config.resources:
                        raise ValueError(f"resource {key} declared twice")
                    config.resources[key] = body
                    config.resource_file[key] = name
        for block in parsed.get("data", []):
            for dtype, named in attributes(block):
                for dname, body in attributes(named):
                    config.data[(label(dtype), label(dname))] = body
        for block in parsed.get("locals", []):
            for key, value in attributes(block):
                if key in config.locals:
                    raise ValueError(f"local.{key} declared twice")
                config.locals[key] = value
        for block in parsed.get("variable", []):
            for vname, body in attributes(block):
                config.variables[label(vname)] = body
        for block in parsed.get("output", []):
            for oname, body in attributes(block):
                config.outputs[label(oname)] = body
        for block in parsed.get("provider", []):
            for pname, body in attributes(block):
                config.providers.append((label(pname), body))
        config.terraform += parsed.get("terraform", [])
    return config


def locals_in(config: Config, filename: str) -> list[str]:
    return [key for block in config.files[filename].get("locals", [])
            for key, _ in attributes(block)]


# --- Evaluating the locals with Terraform -----------------------------------------

@dataclass(frozen=True)
class Evaluated:
    locals: dict[str, Any]
    vars: dict[str, Any]


def evaluate_locals(config: Config, scratch: Path, variables: dict[str, Any],
                    catalog: str | None = None, monitoring: str | None = None) -> Evaluated:
    """Run Terraform on the locals-only files in `scratch` (beside copies of
    functions.yaml and the catalogs); `catalog` and `monitoring` replace
    backends.yaml and monitoring.yaml."""
    module = scratch / "terraform"
    module.mkdir(parents=True, exist_ok=True)
    for name in LOCALS_FILES:
        shutil.copy(TERRAFORM_DIR / name, module / name)
    (scratch / "backends.yaml").write_text(
        catalog if catalog is not None else (REPO / "backends.yaml").read_text())
    if monitoring is not None:
        (scratch / "monitoring.yaml").write_text(monitoring)
    elif (REPO / "monitoring.yaml").exists():
        shutil.copy(REPO / "monitoring.yaml", scratch / "monitoring.yaml")
    shutil.copy(REPO / "functions.yaml", scratch / "functions.yaml")
    local_names = [n for f in LOCALS_FILES for n in locals_in(config, f)]
    body = ["output \"locals\" {", "  value = {"]
    body += [f"    {n} = local.{n}" for n in local_names]
    body += ["  }", "}", "output \"vars\" {", "  value = {"]
    body += [f"    {n} = var.{n}" for n in config.variables]
    body += ["  }", "}"]
    (module / "zz_offline_outputs.tf").write_text("\n".join(body) + "\n")
    (module / "offline.auto.tfvars.json").write_text(json.dumps(variables))
    env = terraform_env()
    for command in (["init", "-input=false", "-no-color", "-backend=false"],
                    ["apply", "-auto-approve", "-input=false", "-no-color"]):
        run = subprocess.run([terraform(), *command], cwd=module, env=env, capture_output=True,
                             text=True, timeout=120)
        if run.returncode != 0:
            raise TerraformError(run.stdout + run.stderr)
    out = subprocess.run([terraform(), "output", "-json"], cwd=module, env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    values = json.loads(out.stdout)
    return Evaluated(locals=values["locals"]["value"], vars=values["vars"]["value"])


# --- Evaluating resource expressions ------------------------------------------------

@dataclass(frozen=True)
class Ref:
    """A reference to another resource: google_x.name[key].path..."""

    type: str
    name: str
    key: Any = None
    path: tuple[Any, ...] = ()
    data: bool = False

    def __str__(self) -> str:
        key = "" if self.key is None else f"[{self.key!r}]"
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in self.path)
        return f"{'data.' if self.data else ''}{self.type}.{self.name}{key}{path}"


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<number>\d+(?:\.\d+)?)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<op>==|!=|=>|&&|\|\||[.\[\](),?:!{}=<>+\-*/%])
  | (?P<ident>[A-Za-z_][A-Za-z0-9_-]*)
""", re.VERBOSE)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text.startswith("${", pos) or text.startswith("%{", pos):
            raise Unsupported(f"nested template in {text!r}")
        match = _TOKEN.match(text, pos)
        if not match:
            raise Unsupported(f"cannot read {text[pos:]!r}")
        kind = match.lastgroup or ""
        if kind != "ws":
            out.append((kind, match.group()))
        pos = match.end()
    return out


def _split_template(text: str) -> list[tuple[bool, str]]:
    """A quoted template's parts: (is_expression, text)."""
    parts: list[tuple[bool, str]] = []
    i, literal = 0, ""
    while i < len(text):
        if text.startswith("$${", i):
            literal += "${"
            i += 3
        elif text.startswith("${", i):
            depth, j, quoted = 1, i + 2, False
            while depth:
                if j >= len(text):
                    raise Unsupported(f"unterminated interpolation in {text!r}")
                c = text[j]
                if quoted:
                    if c == "\\":
                        j += 1
                    elif c == '"':
                        quoted = False
                elif c == '"':
                    quoted = True
                elif c == "{":
                    depth += 1
                elif c == "}":
                    depth -= 1
                j += 1
            if literal:
                parts.append((False, literal))
                literal = ""
            parts.append((True, text[i + 2:j - 1]))
            i = j
        elif text.startswith("%{", i):
            raise Unsupported(f"template directive in {text!r}")
        else:
            literal += text[i]
            i += 1
    if literal:
        parts.append((False, literal))
    return parts


class Evaluator:
    FUNCTIONS: ClassVar[dict[str, Callable[..., Any]]] = {
        "toset": lambda xs: sorted(set(xs), key=str),
        "tostring": lambda x: x if isinstance(x, str) else json.dumps(x),
        "keys": lambda m: sorted(m),
        "values": lambda m: [m[k] for k in sorted(m)],
        "length": len,
        "replace": lambda s, a, b: s.replace(a, b),
    }

    def __init__(self, scope: dict[str, Any]) -> None:
        self.scope = scope

    def with_scope(self, **extra: Any) -> Evaluator:
        return Evaluator({**self.scope, **extra})

    # python-hcl2 value -> Python value
    def value(self, raw: Any) -> Any:
        if isinstance(raw, bool | int | float) or raw is None:
            return raw
        if isinstance(raw, list):
            return [self.value(v) for v in raw]
        if isinstance(raw, dict):
            return {label(k): self.value(v) for k, v in attributes(raw)}
        if not isinstance(raw, str):
            raise Unsupported(repr(raw))
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            return self.template(raw[1:-1])
        if raw.startswith("${") and raw.endswith("}"):
            return self.expression(raw[2:-1])
        raise Unsupported(f"bare expression {raw!r}")

    def template(self, text: str) -> Any:
        parts = _split_template(text)
        if len(parts) == 1 and parts[0][0]:
            return self.expression(parts[0][1])
        pieces: list[Any] = []
        for is_expr, piece in parts:
            if is_expr:
                value = self.expression(piece)
                pieces.append(value if isinstance(value, str | Ref) else (
                    json.dumps(value) if not isinstance(value, int | float) else str(value)))
            else:
                pieces.append(piece.encode().decode("unicode_escape") if "\\" in piece else piece)
        if any(isinstance(p, Ref) for p in pieces):
            return Template(tuple(pieces))
        return "".join(pieces)

    def expression(self, text: str) -> Any:
        tokens = _tokens(text)
        value, rest = self._conditional(tokens)
        if rest:
            raise Unsupported(f"cannot read {text!r} past {rest[0][1]!r}")
        if isinstance(value, _Resource):
            if value.name is None:
                raise Unsupported(f"incomplete reference in {text!r}")
            return Ref(value.type, value.name, data=value.data)
        return value

    Tokens = list[tuple[str, str]]

    def _conditional(self, t: Tokens) -> tuple[Any, Tokens]:
        cond, t = self._equality(t)
        if t and t[0][1] == "?":
            yes, t = self._conditional(t[1:])
            if not t or t[0][1] != ":":
                raise Unsupported("conditional without ':'")
            no, t = self._conditional(t[1:])
            if not isinstance(cond, bool):
                raise Unsupported(f"condition is not a bool: {cond!r}")
            return (yes if cond else no), t
        return cond, t

    def _equality(self, t: Tokens) -> tuple[Any, Tokens]:
        left, t = self._unary(t)
        if t and t[0][1] in ("==", "!="):
            op = t[0][1]
            right, t = self._unary(t[1:])
            if isinstance(left, Ref) or isinstance(right, Ref):
                raise Unsupported("comparison with a resource attribute")
            return (left == right) if op == "==" else (left != right), t
        return left, t

    def _unary(self, t: Tokens) -> tuple[Any, Tokens]:
        if t and t[0][1] == "!":
            value, t = self._unary(t[1:])
            if not isinstance(value, bool):
                raise Unsupported("! on a non-bool")
            return not value, t
        return self._postfix(t)

    def _postfix(self, t: Tokens) -> tuple[Any, Tokens]:
        value, t = self._primary(t)
        while t and t[0][1] in (".", "["):
            if t[0][1] == ".":
                if len(t) < 2 or t[1][0] not in ("ident", "number"):
                    raise Unsupported("attribute access without a name")
                name: Any = t[1][1]
                t = t[2:]
                if name.isdigit():
                    name = int(name)
                value = self._get(value, name)
            else:
                index, t = self._conditional(t[1:])
                if not t or t[0][1] != "]":
                    raise Unsupported("index without ']'")
                t = t[1:]
                value = self._get(value, index, indexed=True)
        return value, t

    def _get(self, value: Any, key: Any, indexed: bool = False) -> Any:
        if isinstance(value, _Resource):
            if value.pending_type:  # data.<type>
                return _Resource(key, None, data=True)
            if value.name is None:  # google_x.<name>
                if indexed:
                    raise Unsupported(f"index on resource type {value.type}")
                return _Resource(value.type, key, data=value.data)
            if indexed:  # google_x.name[key]
                return Ref(value.type, value.name, key, (), value.data)
            return Ref(value.type, value.name, None, (key,), value.data)
        if isinstance(value, Ref):
            return Ref(value.type, value.name, value.key, (*value.path, key), value.data)
        try:
            return value[key]
        except (KeyError, IndexError, TypeError) as error:
            raise Unsupported(f"no {key!r} in {value!r:.200}") from error

    def _primary(self, t: Tokens) -> tuple[Any, Tokens]:
        if not t:
            raise Unsupported("empty expression")
        kind, text = t[0]
        rest = t[1:]
        if kind == "number":
            return (float(text) if "." in text else int(text)), rest
        if kind == "string":
            return self.template(text[1:-1]), rest
        if text == "(":
            value, rest = self._conditional(rest)
            if not rest or rest[0][1] != ")":
                raise Unsupported("missing ')'")
            return value, rest[1:]
        if text == "[":
            items: list[Any] = []
            while rest and rest[0][1] != "]":
                item, rest = self._conditional(rest)
                items.append(item)
                if rest and rest[0][1] == ",":
                    rest = rest[1:]
            if not rest:
                raise Unsupported("missing ']'")
            return items, rest[1:]
        if kind != "ident":
            raise Unsupported(f"unexpected {text!r}")
        if text in ("true", "false"):
            return text == "true", rest
        if text == "null":
            return None, rest
        if rest and rest[0][1] == "(":
            if text not in self.FUNCTIONS:
                raise Unsupported(f"function {text}()")
            args: list[Any] = []
            rest = rest[1:]
            while rest and rest[0][1] != ")":
                arg, rest = self._conditional(rest)
                args.append(arg)
                if rest and rest[0][1] == ",":
                    rest = rest[1:]
            if not rest:
                raise Unsupported("missing ')'")
            if any(isinstance(a, Ref) for a in args):
                raise Unsupported(f"{text}() of a resource attribute")
            return self.FUNCTIONS[text](*args), rest[1:]
        if text in self.scope:
            return self.scope[text], rest
        if text == "data":
            return _Resource("", None, data=True, pending_type=True), rest
        if text.startswith("google_"):
            return _Resource(text, None), rest
        raise Unsupported(f"unknown name {text!r}")


@dataclass(frozen=True)
class Template:
    """A string template that interpolates resource attributes."""

    parts: tuple[str | Ref, ...]

    @property
    def refs(self) -> list[Ref]:
        return [p for p in self.parts if isinstance(p, Ref)]

    def __str__(self) -> str:
        return "".join(p if isinstance(p, str) else f"${{{p}}}" for p in self.parts)


@dataclass(frozen=True)
class _Resource:
    """`data`, `google_x` or `google_x.name` while a reference is being read."""

    type: str
    name: str | None
    data: bool = False
    pending_type: bool = False


# --- Expanding resources ---------------------------------------------------------------

@dataclass
class Instance:
    type: str
    name: str
    key: Any
    body: dict[str, Any]
    ev: Evaluator

    @property
    def address(self) -> str:
        return f"{self.type}.{self.name}" + ("" if self.key is None else f"[{self.key!r}]")

    def get(self, attribute: str, default: Any = None) -> Any:
        if attribute not in self.body:
            return default
        return self.ev.value(self.body[attribute])

    def blocks(self, name: str) -> list[Instance]:
        """Nested blocks called `name`, literal or generated by `dynamic`."""
        out = [Instance(self.type, self.name, self.key, b, self.ev)
               for b in self.body.get(name, []) if isinstance(b, dict)]
        for dynamic in self.body.get("dynamic", []):
            for dname, spec in attributes(dynamic):
                if label(dname) != name:
                    continue
                iterator = self.ev.value(spec["iterator"]) if "iterator" in spec else name
                items = self.ev.value(spec["for_each"])
                pairs = items.items() if isinstance(items, dict) else (
                    (i, v) for i, v in enumerate(items))
                for k, v in pairs:
                    each = {"key": k if isinstance(items, dict) else v, "value": v}
                    ev = self.ev.with_scope(**{iterator: each})
                    out += [Instance(self.type, self.name, self.key, content, ev)
                            for content in spec["content"]]
        return out

    def block(self, name: str) -> Instance:
        (only,) = self.blocks(name)
        return only


class _Locals(dict[str, Any]):
    """Terraform-evaluated locals, and the other files' locals evaluated here on demand."""

    def __init__(self, evaluated: dict[str, Any], raw: dict[str, Any]) -> None:
        super().__init__(evaluated)
        self.raw = raw
        self.evaluator: Evaluator | None = None

    def __missing__(self, key: str) -> Any:
        if key not in self.raw or self.evaluator is None:
            raise KeyError(key)
        self[key] = self.evaluator.value(self.raw[key])
        return self[key]


class Deployment:
    """Every resource instance the configuration declares, with evaluated locals."""

    def __init__(self, config: Config, evaluated: Evaluated) -> None:
        self.config = config
        self.evaluated = evaluated
        local = _Locals(evaluated.locals, config.locals)
        self.base = Evaluator({"local": local, "var": evaluated.vars,
                               "path": {"module": str(TERRAFORM_DIR)}})
        local.evaluator = self.base
        self._cache: dict[tuple[str, str], dict[Any, Instance]] = {}

    def instances(self, rtype: str, rname: str) -> dict[Any, Instance]:
        if (rtype, rname) not in self._cache:
            body = self.config.resources[(rtype, rname)]
            out: dict[Any, Instance] = {}
            if "for_each" in body:
                items = self.base.value(body["for_each"])
                pairs = items.items() if isinstance(items, dict) else ((v, v) for v in items)
                for k, v in pairs:
                    out[k] = Instance(rtype, rname, k, body,
                                      self.base.with_scope(each={"key": k, "value": v}))
            elif "count" in body:
                for i in range(int(self.base.value(body["count"]))):
                    out[i] = Instance(rtype, rname, i, body,
                                      self.base.with_scope(count={"index": i}))
            else:
                out[None] = Instance(rtype, rname, None, body, self.base)
            self._cache[(rtype, rname)] = out
        return self._cache[(rtype, rname)]

    def all_of_type(self, rtype: str) -> list[Instance]:
        return [i for (t, n) in self.config.resources if t == rtype
                for i in self.instances(t, n).values()]

    def resolve(self, ref: Any) -> Instance:
        """The instance a Ref points at (it must exist)."""
        if not isinstance(ref, Ref):
            raise AssertionError(f"expected a reference to a resource, got {ref!r}")
        if ref.data:
            raise AssertionError(f"{ref} is a data source")
        instances = self.instances(ref.type, ref.name)
        if ref.key not in instances:
            have = sorted(map(str, instances))
            raise AssertionError(f"{ref}: no instance {ref.key!r} (has {have})")
        return instances[ref.key]
