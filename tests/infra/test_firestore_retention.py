"""Every Firestore collection the code writes either stays small by construction or
has a TTL policy in terraform/firestore.tf; nothing grows forever unnoticed.

The code's collection names are read from its source (every `.collection(NAME)`
call in shared/aiprod, NAME a string or a module constant), so a new collection
fails here until it is given a TTL policy or a reason it stays bounded.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.infra import tfconfig
from tests.infra.tfconfig import Deployment

CODE = tfconfig.REPO / "shared" / "aiprod"

# Collections that need no TTL, and why. A collection group name (a subcollection
# such as budget_days/{day}/keys) counts once, whatever its parent.
BOUNDED = {
    "api_keys": "one document per API key an operator creates with `aiprod keys`",
    "backend_health": "one document per catalog backend (its circuit breaker)",
    "slots": "backend_health/{backend}/slots: at most the backend's concurrency, each "
             "deleted on release (its expires_at is a lease, NOT a TTL: a TTL would "
             "delete held slots)",
    "budget_days": "one ledger document per UTC day: the spend record, kept",
    "keys": "budget_days/{day}/keys: one counter per API key that spent that day, kept "
            "with the day's record",
    "alerts": "budget_days/{day}/alerts: at most one marker per threshold and day",
    "spend_hours": "budget_days/{day}/spend_hours: one document per scope (the day, each "
                   "API key) that settled money that day, kept with the day's record",
    "jobs": "one document per job, kept on purpose: a job id stays answerable "
            "(GET /v1/jobs/{id}, `aiprod slo`, the spend it accounts for) after its "
            "output expires; an operator who wants a retention deletes old jobs "
            "(docs/deploying.md, 'Data retention')",
}


def _constants(tree: ast.Module) -> dict[str, str]:
    return {target.id: node.value.value
            for node in tree.body if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            for target in node.targets if isinstance(target, ast.Name)}


def written_collections(root: Path = CODE) -> dict[str, set[str]]:
    """Collection name -> the files (relative to root) that open it with .collection(...)."""
    modules = {path: ast.parse(path.read_text()) for path in sorted(root.rglob("*.py"))}
    constants: dict[str, str] = {}
    for tree in modules.values():
        constants.update(_constants(tree))  # module constants, importable by name
    found: dict[str, set[str]] = {}
    for path, tree in modules.items():
        local = {**constants, **_constants(tree)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "collection" and node.args):
                continue
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                name = arg.value
            elif isinstance(arg, ast.Name) and arg.id in local:
                name = local[arg.id]
            elif isinstance(arg, ast.Attribute) and arg.attr in constants:
                name = constants[arg.attr]
            else:
                raise AssertionError(f"{path}:{node.lineno}: a collection name the scan cannot "
                                     f"read ({ast.unparse(arg)}): use a module constant")
            found.setdefault(name, set()).add(str(path.relative_to(root)))
    return found


def ttl_policies(deployment: Deployment) -> dict[str, str]:
    return {f.get("collection"): f.get("field")
            for f in deployment.instances("google_firestore_field", "ttl").values()
            if f.blocks("ttl_config")}


def test_the_scan_finds_the_collections_the_code_writes() -> None:
    found = written_collections()
    assert {"jobs", "idempotency_keys", "rate_limits", "reservations", "budget_days"} <= set(
        found), found


def test_every_written_collection_is_bounded_or_expires(deployment: Deployment) -> None:
    ttl = ttl_policies(deployment)
    found = written_collections()
    unaccounted = {name: sorted(files) for name, files in found.items()
                   if name not in ttl and name not in BOUNDED}
    assert not unaccounted, (
        f"collections with neither a TTL policy (terraform/firestore.tf) nor a reason in "
        f"BOUNDED: {unaccounted}")
    assert not set(ttl) & set(BOUNDED), "a collection is both bounded and expiring"
    # Nothing stale on either side: a TTL or a reason for a collection nobody writes.
    assert not set(ttl) - set(found), f"TTL policies on collections nothing writes: " \
        f"{sorted(set(ttl) - set(found))}"
    assert not set(BOUNDED) - set(found), sorted(set(BOUNDED) - set(found))


def test_ttl_fields_are_the_ones_the_code_sets(deployment: Deployment) -> None:
    """A TTL policy on a field the code never writes would expire nothing: each file
    that opens a TTL collection names the TTL field."""
    found = written_collections()
    for collection, ttl_field in ttl_policies(deployment).items():
        for name in found.get(collection, set()):
            assert f'"{ttl_field}"' in (CODE / name).read_text(), (
                f"{name} writes {collection} without its TTL field {ttl_field}")


def test_the_operators_guides_name_every_expiring_collection(deployment: Deployment) -> None:
    """An operator reads what expires in the deploying guide and terraform/README.md,
    not in firestore.tf: a new TTL policy is named there too."""
    for guide in ("docs/deploying.md", "terraform/README.md"):
        text = (tfconfig.REPO / guide).read_text()
        missing = sorted(c for c in ttl_policies(deployment) if f"`{c}`" not in text)
        assert not missing, f"{guide} does not name the expiring collections {missing}"


def test_the_scan_is_not_vacuous(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text('JOBS = "jobs"\ndef f(c):\n    c.collection(JOBS)\n'
                                   '    c.collection("x").document("d").collection("y")\n')
    assert written_collections(tmp_path) == {"jobs": {"a.py"}, "x": {"a.py"}, "y": {"a.py"}}
