"""The local stack hands each function exactly the credentials its deployment gets.

Production (terraform/topology.tf) gives provider secrets and Vertex AI access to
render functions only, so the API and the dead-letter handler cannot call a
provider; a local stack that handed every process every key would hide a cancel
that can never reach the provider. Pinned here against Terraform's own evaluated
locals, so neither side can drift.
"""

from __future__ import annotations

from aiprod.wiring.config import Settings, load_catalog
from aiprod_dev.localstack.stack import LOCAL_CREDENTIALS, credentials_for
from aiprod_dev.topology import topology
from tests.infra import tfconfig

CATALOG = load_catalog(tfconfig.REPO / "backends.yaml")
# How Veo authenticates: as the function's service account in production
# (roles/aiplatform.user, terraform `vertex_users`), with this token locally.
VERTEX_CREDENTIAL = "AIPROD_VEO_ACCESS_TOKEN"


def deployed_credentials(evaluated: tfconfig.Evaluated) -> dict[str, set[str]]:
    local = evaluated.locals
    return {name: {local["secrets"][secret] for secret in function["secrets"]}
            | ({VERTEX_CREDENTIAL} if name in local["vertex_users"] else set())
            for name, function in local["functions"].items()}


def test_each_local_function_gets_the_credentials_its_deployment_gets(
        evaluated: tfconfig.Evaluated) -> None:
    local = {f.name: set(credentials_for(f, CATALOG))
             for f in topology(CATALOG, Settings.model_construct()).functions}

    assert local == deployed_credentials(evaluated)
    for name in ("api", "intake", "dead-letter", "notifier"):
        assert not local[name] & set(LOCAL_CREDENTIALS), name
    assert all(local[f"render-{b.name}"] for b in CATALOG.backends)
