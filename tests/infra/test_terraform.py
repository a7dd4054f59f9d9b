"""terraform/ checked offline: formatting, the google provider's schema, and
cross-checks against the code (topology, settings, secrets, least privilege)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from aiprod.wiring.config import Settings, load_catalog
from aiprod_dev.topology import DEAD_LETTER_SUFFIX, load_functions_spec, topology
from tests.infra import provider_schema, tfconfig
from tests.infra.conftest import PROJECT
from tests.infra.tfconfig import Deployment, Instance, Ref, Template, Unsupported

CATALOG = load_catalog(tfconfig.REPO / "backends.yaml")
FUNCTION = "google_cloudfunctions2_function"
SUBSCRIPTION = "google_pubsub_subscription"
TOPIC = "google_pubsub_topic"

# Settings the deployed functions leave at their code defaults, and why. Every
# other setting the code reads must be set on every function that reads it.
DEFAULTED = {
    "catalog_path": "backends.yaml is found beside main.py in the source archive",
    "stats_bucket_s": "statistics bucket width: the code default (an hour) is the tested value",
    "stats_shards": "counter shards per bucket: the code default is sized for Firestore's "
                    "sustained write rate per document",
    "stats_cache_s": "how long a process reuses the statistics it read: the code default",
    "poll_interval_s": "provider polling cadence: the code default is the tested value",
    "create_timeout_s": "provider create-call timeout: the code default is the tested value",
    "transient_retry_initial_s": "retry tuning: the code default is the tested value",
    "transient_retry_budget_s": "retry tuning: the code default is the tested value",
    "fallback_on_refusal": "policy: a prompt one provider refuses is not sent to the next",
    "circuit_strikes": "circuit breaker: the design's 3 consecutive failures open it",
    "circuit_cooldown_s": "circuit breaker cool-down: the code default is the tested value",
    "output_checks_at_once": "outputs decoded at once per render process: the code default "
                             "is the measured value (bench/, functions.yaml)",
    "output_max_bytes": "the largest output a render process takes: the code default is "
                        "sized against functions.yaml's render memory "
                        "(tests/unit/test_output_bound.py)",
    "uploads_at_once": "uploads an api process decodes at once: the code default is the "
                       "measured value (bench/uploads.py, tests/unit/test_upload_bound.py)",
    "upload_wait_s": "how long an upload waits for its turn: the code default, within the "
                     "api's 60 s timeout",
    "redrive_max_age_s": "how long a job may wait for render capacity: the documented "
                         "default (a day)",
    "backend_busy_wait_s": "wait for a provider call slot: the code default is the tested value",
    "unknown_outcome_wait_s": "empty in production: the catalog's task_timeout_s per backend",
    "runway_base_url": "Runway's production API by default; the local stack overrides it",
    "replicate_base_url": "Replicate's production API by default; the local stack overrides it",
    "veo_base_url": "empty means Google's regional Vertex AI endpoint",
    "veo_access_token": "empty means Application Default Credentials: Veo runs as the "
                        "function's own service account (roles/aiplatform.user), no key",
    "default_rate_limit_rpm": "requests a minute for keys without their own --rpm: the code "
                              "default (600) is the documented value",
    "webhook_timeout_s": "webhook request timeout: the code default is the tested value",
    "image_allow_hosts": "development override of the image URL address rules: production "
                         "never sets it, so image URLs must be public https",
    "webhook_allow_hosts": "development override of the webhook address rules: production "
                           "must leave it empty, so Terraform never sets it",
}
# Settings only some functions read (all others: every function).
SCOPED_TO_KIND = {
    "backend": "render",
    "render_deadline_s": "render",
    "webhook_signing_key": "notifier",  # the webhook sender
    "watchdog_interval_s": "watchdog",
    "watchdog_stale_s": "watchdog",
}
SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)$")
# Variables the platform's server reads rather than the code: functions-framework's
# gunicorn threads (one per concurrent request).
SERVER_VARIABLES = {"THREADS"}


def env_name(name: str) -> str:
    alias = Settings.model_fields[name].validation_alias
    return alias if isinstance(alias, str) else (Settings.model_config.get("env_prefix", "")
                                                  + name).upper()


def is_secret(name: str) -> bool:
    return Settings.model_fields[name].annotation is SecretStr or bool(
        SECRET_NAME.search(env_name(name)))


def functions(deployment: Deployment) -> dict[str, Instance]:
    return {i.get("name"): i for i in deployment.instances(FUNCTION, "fn").values()}


def plain_env(fn: Instance) -> dict[str, str]:
    env: dict[str, str] = fn.block("service_config").get("environment_variables") or {}
    return env


def secret_env(fn: Instance) -> dict[str, Any]:
    return {b.get("key"): b.get("secret")
            for b in fn.block("service_config").blocks("secret_environment_variables")}


def kind(fn: Instance) -> str:
    return str(fn.ev.scope["each"]["value"]["kind"])


def backend_of(fn: Instance) -> str | None:
    value: str | None = fn.ev.scope["each"]["value"]["backend"]
    return value


def run_terraform(*args: str, cwd: Path = tfconfig.REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tfconfig.terraform(), *args], cwd=cwd, env=tfconfig.terraform_env(),
                          capture_output=True, text=True, timeout=120)


# --- Form ------------------------------------------------------------------------------

def test_terraform_is_formatted() -> None:
    run = run_terraform("fmt", "-check", "-recursive", "-diff", "-no-color", "terraform")
    assert run.returncode == 0, f"run `terraform fmt -recursive terraform`:\n{run.stdout}"


def test_locals_files_declare_no_resources(tf_config: tfconfig.Config) -> None:
    """The files Terraform evaluates offline must not depend on resources."""
    for name in tfconfig.LOCALS_FILES:
        parsed = tf_config.files[name]
        assert not set(parsed) & {"resource", "data", "module", "provider"}, name
        text = (tfconfig.TERRAFORM_DIR / name).read_text()
        refs = re.findall(r"(?<![\w.\"/-])(?:data\.)?google_\w+\.\w+", text)
        assert not refs, f"{name} refers to resources {refs}: keep it evaluable offline"


def test_versions_are_pinned(tf_config: tfconfig.Config, provider_schemas: dict[
        str, provider_schema.ProviderSchema]) -> None:
    (block,) = tf_config.terraform
    providers = dict(tfconfig.attributes(block["required_providers"][0]))
    # Every provider the configuration requires has an offline schema, and back.
    assert set(providers) == set(provider_schema.SOURCES), set(providers)
    for name, source in provider_schema.SOURCES.items():
        required = providers[name]
        assert tfconfig.label(required["source"]) == source.source, name
        schema = provider_schemas[name]
        assert schema.version == source.provider_version, name
        major, minor, patch = (int(p) for p in schema.version.split("."))
        # "~> 8.7": the schema the tests check against, and that major version only;
        # 0.x releases may break in a minor: "~> 0.14.2" keeps to 0.14.
        expected = f"~> {major}.{minor}" if major else f"~> 0.{minor}.{patch}"
        assert tfconfig.label(required["version"]) == expected, name
    required = tfconfig.label(block["required_version"])
    assert re.fullmatch(r">= 1\.\d+\.\d+, < 2\.0\.0", required), required
    version = json.loads(run_terraform("version", "-json").stdout)["terraform_version"]
    low = tuple(int(p) for p in required.split(",")[0].split()[1].split("."))
    assert tuple(int(p) for p in version.split(".")) >= low, (version, required)
    assert "gcs" in {tfconfig.label(k) for b in block["backend"] for k, _ in tfconfig.attributes(b)}


# --- The provider's schema ---------------------------------------------------------------

def _check_body(body: dict[str, Any], level: provider_schema.Block, where: str,
                schema: provider_schema.ProviderSchema, errors: list[str], top: bool) -> None:
    present: set[str] = set()
    for key, value in tfconfig.attributes(body):
        if key == "dynamic":
            for dynamic in value:
                for dname, spec in tfconfig.attributes(dynamic):
                    name = tfconfig.label(dname)
                    if name not in level.blocks:
                        errors.append(f"{where}: no block {name!r} (dynamic)")
                        continue
                    unknown = {k for k, _ in tfconfig.attributes(spec)} - {
                        "for_each", "iterator", "content", "labels"}
                    if unknown or "content" not in spec or "for_each" not in spec:
                        errors.append(f"{where}: dynamic {name!r} is malformed")
                    present.add(name)
                    for content in spec.get("content", []):
                        _check_body(content, schema.struct(level.blocks[name][1]),
                                    f"{where}.{name}", schema, errors, top=False)
            continue
        if top and key in tfconfig.META_ARGUMENTS:
            continue
        if key in level.attributes:
            if tfconfig.is_block(value):
                errors.append(f"{where}: {key!r} is an argument but is written as a block")
            present.add(key)
        elif key in level.blocks:
            if not tfconfig.is_block(value):
                errors.append(f"{where}: {key!r} is a block but is written as an argument")
                continue
            present.add(key)
            for nested in value:
                _check_body(nested, schema.struct(level.blocks[key][1]), f"{where}.{key}",
                            schema, errors, top=False)
        else:
            errors.append(f"{where}: unknown argument or block {key!r}")
    errors += [f"{where}: required argument {name!r} is missing"
               for name, required in level.attributes.items() if required and name not in present]
    errors += [f"{where}: required block {name!r} is missing"
               for name, (required, _) in level.blocks.items() if required and name not in present]


def provider_of(rtype: str, body: dict[str, Any]) -> str:
    """The provider a resource or data source belongs to: its `provider` meta-argument
    (google-beta), else its type's prefix, as Terraform decides."""
    if "provider" in body:
        return tfconfig.label(str(body["provider"])).removeprefix("${").removesuffix("}")
    return rtype.split("_", 1)[0]


def schema_errors(config: tfconfig.Config,
                  schemas: dict[str, provider_schema.ProviderSchema]) -> list[str]:
    errors: list[str] = []
    for kind, table in (("resource", config.resources), ("data source", config.data)):
        data = kind == "data source"
        for (rtype, rname), body in table.items():
            where = f"{'data.' if data else ''}{rtype}.{rname}"
            provider = provider_of(rtype, body)
            if provider not in schemas:
                errors.append(f"{where}: provider {provider!r} has no offline schema")
                continue
            level = schemas[provider].resource(rtype, data=data)
            if level is None:
                errors.append(f"{where}: the {provider} provider has no {kind} {rtype}")
            else:
                _check_body(body, level, where, schemas[provider], errors, top=True)
    for name, body in config.providers:
        if name not in schemas:
            errors.append(f"provider {name}: no offline schema")
            continue
        _check_body(body, schemas[name].struct(schemas[name].provider), f"provider.{name}",
                    schemas[name], errors, top=True)
    errors += reference_errors(config, schemas)
    return errors


_REFERENCE = re.compile(
    r"(?<![\w.])(data\.)?(google_\w+)\.(\w+)((?:\[[^\]]*\])?)((?:\.\w+|\[\d+\])*)")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for k, v in value.items() if not k.startswith("__comment") for s in _strings(v)]
    return []


def reference_errors(config: tfconfig.Config,
                     schemas: dict[str, provider_schema.ProviderSchema]) -> list[str]:
    """Every `google_x.name...` reference names a declared resource and a real attribute."""
    errors: list[str] = []
    everything = [*config.resources.values(), *config.data.values(), config.locals,
                  *config.outputs.values()]
    for text in (s for body in everything for s in _strings(body)):
        for data, rtype, rname, key, path in _REFERENCE.findall(text):
            table = config.data if data else config.resources
            ref = f"{data}{rtype}.{rname}{key}{path}"
            if (rtype, rname) not in table:
                errors.append(f"{ref}: no such {'data source' if data else 'resource'}")
                continue
            body = table[(rtype, rname)]
            repeated = "for_each" in body or "count" in body
            if bool(key) != repeated and not (repeated and not key and not path):
                errors.append(f"{ref}: {'needs' if repeated else 'cannot take'} an instance key")
            schema = schemas[provider_of(rtype, body)]
            node: Any = (schema.data_exports if data else schema.exports).get(rtype, {})
            for attr in re.findall(r"\.(\w+)", path):
                if not isinstance(node, dict) or attr not in node:
                    errors.append(f"{ref}: {rtype} has no attribute {attr!r} there")
                    break
                node = node[attr]
    return errors


def test_configuration_matches_the_provider_schemas(
        tf_config: tfconfig.Config,
        provider_schemas: dict[str, provider_schema.ProviderSchema]) -> None:
    errors = schema_errors(tf_config, provider_schemas)
    assert not errors, "\n".join(errors)


def test_schema_check_catches_mistakes(
        tf_config: tfconfig.Config,
        provider_schemas: dict[str, provider_schema.ProviderSchema]) -> None:
    """The schema check is not vacuous: typical slips are reported."""
    broken = tfconfig.load_config()
    topic = broken.resources[(TOPIC, "topic")]
    topic["message_retention"] = '"600s"'  # not an argument
    sub = broken.resources[(SUBSCRIPTION, "push")]
    sub["retry_policy"] = '"10s"'  # a block written as an argument
    del broken.resources[("google_firestore_field", "ttl")]["collection"]  # required
    broken.resources[(FUNCTION, "fn")]["service_config"][0]["timeout"] = "${60}"
    broken.locals["oops"] = "${google_cloudfunctions2_function.fn[\"api\"].service_config[0].url}"
    # The time and google-beta resources are checked against their own providers.
    broken.resources[("time_sleep", "log_metrics_ready")]["create_after"] = '"600s"'
    identity = broken.resources[("google_project_service_identity", "pubsub")]
    identity["services"] = identity.pop("service")
    broken.resources[("google_project_service_identity", "unbeta")] = {
        k: v for k, v in identity.items() if k != "provider"}
    errors = "\n".join(schema_errors(broken, provider_schemas))
    assert "unknown argument or block 'message_retention'" in errors
    assert "'retry_policy' is a block but is written as an argument" in errors
    assert "required argument 'collection' is missing" in errors
    assert "service_config: unknown argument or block 'timeout'" in errors
    assert "has no attribute 'url' there" in errors
    assert "time_sleep.log_metrics_ready: unknown argument or block 'create_after'" in errors
    assert ("google_project_service_identity.pubsub: required argument 'service' is missing"
            in errors)
    assert ("google_project_service_identity.unbeta: the google provider has no resource "
            "google_project_service_identity") in errors


def test_every_resolvable_reference_points_at_an_existing_instance(
        deployment: Deployment) -> None:
    """Like `terraform plan`'s "Invalid index": keys used in references exist."""
    problems: list[str] = []
    resolved = 0

    def walk(instance: Instance, body: dict[str, Any]) -> None:
        nonlocal resolved
        for key, value in tfconfig.attributes(body):
            if key in ("depends_on", "dynamic", "for_each", "count", "lifecycle"):
                continue
            if tfconfig.is_block(value):
                for nested in instance.blocks(key):
                    walk(nested, nested.body)
                continue
            try:
                evaluated = instance.ev.value(value)
            except Unsupported:
                continue
            refs = evaluated.refs if isinstance(evaluated, Template) else (
                [evaluated] if isinstance(evaluated, Ref) else [])
            for ref in refs:
                if ref.data:
                    continue
                try:
                    deployment.resolve(ref)
                    resolved += 1
                except AssertionError as error:
                    problems.append(f"{instance.address}.{key}: {error}")
        for dynamic in body.get("dynamic", []):
            for dname, _ in tfconfig.attributes(dynamic):
                for nested in instance.blocks(tfconfig.label(dname)):
                    walk(nested, nested.body)

    for rtype, rname in deployment.config.resources:
        for instance in deployment.instances(rtype, rname).values():
            walk(instance, instance.body)
    assert not problems, "\n".join(problems)
    assert resolved > 50  # the walk really followed the wiring


# --- Topology: the same as the code's, from the same catalog -----------------------------

def deployed_topology(deployment: Deployment) -> dict[str, Any]:
    fns = functions(deployment)
    by_address = {fn.key: name for name, fn in fns.items()}
    topics = {t.get("name") for t in deployment.instances(TOPIC, "topic").values()}
    subscriptions = {}
    for sub in deployment.instances(SUBSCRIPTION, "push").values():
        push = sub.block("push_config")
        endpoint = push.get("push_endpoint")
        assert isinstance(endpoint, Template), endpoint
        (target,) = {r.key for r in endpoint.refs}
        dead_letters = sub.blocks("dead_letter_policy")
        dlq = deployment.resolve(dead_letters[0].get("dead_letter_topic")).get("name") if (
            dead_letters) else None
        subscriptions[sub.get("name")] = (
            deployment.resolve(sub.get("topic")).get("name"), by_address[target], dlq)
    return {
        "topics": topics,
        "subscriptions": subscriptions,
        "functions": {name: (fn.block("build_config").get("entry_point"),
                             plain_env(fn).get("BACKEND")) for name, fn in fns.items()},
    }


def test_topology_is_the_codes_topology(deployment: Deployment) -> None:
    expected = topology(CATALOG, Settings.model_construct())
    deployed = deployed_topology(deployment)
    assert deployed["topics"] == set(expected.topics)
    assert deployed["subscriptions"] == {
        s.name: (s.topic, s.function, s.dead_letter_topic) for s in expected.subscriptions}
    assert deployed["functions"] == {
        f.name: (f.target, dict(f.env).get("BACKEND")) for f in expected.functions}


def test_every_catalog_backend_is_deployed(deployment: Deployment) -> None:
    """Read backends.yaml directly: each backend has its topic, dead-letter topic,
    push subscription with a dead-letter policy, and render function."""
    names = [b["name"] for b in yaml.safe_load((tfconfig.REPO / "backends.yaml").read_text())[
        "backends"]]
    deployed = deployed_topology(deployment)
    fns = functions(deployment)
    for name in names:
        topic, dlq = f"render-{name}", f"render-{name}{DEAD_LETTER_SUFFIX}"
        assert {topic, dlq} <= deployed["topics"], name
        assert deployed["subscriptions"][topic] == (topic, f"render-{name}", dlq), name
        fn = fns[f"render-{name}"]
        assert fn.block("build_config").get("entry_point") == "render"
        assert plain_env(fn)["BACKEND"] == name


def test_a_new_catalog_entry_is_deployed_without_touching_terraform(
        tf_config: tfconfig.Config, tmp_path: Path) -> None:
    """The catalog is read with yamldecode, not copied: add an entry, get a backend."""
    catalog = yaml.safe_load((tfconfig.REPO / "backends.yaml").read_text())
    extra = dict(catalog["backends"][0], name="runway-gen9-turbo-preview-long-name")
    catalog["backends"].append(extra)
    evaluated = tfconfig.evaluate_locals(tf_config, tmp_path, {"project_id": PROJECT},
                                         catalog=yaml.safe_dump(catalog))
    deployed = deployed_topology(Deployment(tf_config, evaluated))
    name = "render-runway-gen9-turbo-preview-long-name"
    assert deployed["functions"][name] == ("render", extra["name"])
    assert deployed["subscriptions"][name][2] == f"{name}{DEAD_LETTER_SUFFIX}"
    ids = evaluated.locals["account_ids"]
    assert len(set(ids.values())) == len(ids)
    assert all(re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]", i) for i in ids.values()), ids


# --- Delivery: dead letters, retries, ack deadlines vs timeouts ----------------------------

def test_subscriptions_dead_letter_retry_and_outlast_their_function(
        deployment: Deployment) -> None:
    fns = {fn.key: fn for fn in deployment.instances(FUNCTION, "fn").values()}
    subs = list(deployment.instances(SUBSCRIPTION, "push").values())
    spec = load_functions_spec()
    assert subs
    for sub in subs:
        name = sub.get("name")
        target = deployment.resolve(sub.block("push_config").block("oidc_token").get("audience"))
        timeout = target.block("service_config").get("timeout_seconds")
        ack = sub.get("ack_deadline_seconds")
        assert timeout < ack <= 600, f"{name}: ack deadline {ack} vs function timeout {timeout}"
        # The retry policy is functions.yaml's for the kind of function it feeds.
        delivery = spec.delivery[kind(target)]
        retry = sub.block("retry_policy")
        assert (retry.get("minimum_backoff"), retry.get("maximum_backoff")) == (
            f"{delivery.minimum_backoff_s}s", f"{delivery.maximum_backoff_s}s"), name
        assert sub.block("expiration_policy").get("ttl") == "", f"{name} would expire when idle"
        policies = sub.blocks("dead_letter_policy")
        if name.endswith(DEAD_LETTER_SUFFIX):
            assert not policies, f"{name} is on a dead-letter topic: it must not dead-letter"
        else:
            (policy,) = policies
            assert policy.get("max_delivery_attempts") == delivery.max_delivery_attempts
            assert deployment.resolve(policy.get("dead_letter_topic")).get("name") == (
                f"{deployment.resolve(sub.get('topic')).get('name')}{DEAD_LETTER_SUFFIX}")
        assert target.key in fns


# Pub/Sub's documented bounds: each backoff 0..600 s, max_delivery_attempts 5..100
# (https://cloud.google.com/pubsub/docs/handling-failures,
# https://cloud.google.com/pubsub/docs/dead-letter-topics). Pub/Sub's backoff grows
# from the minimum to the maximum, so the configured retry window is (attempts - 1)
# x minimum_backoff, the least the policy allows. It is best effort, not a
# guarantee: "delay can be more or less than configured backoff"
# (https://cloud.google.com/java/docs/reference/google-cloud-pubsub/latest/com.google.pubsub.v1.RetryPolicy),
# hence the margins below (an hour for a webhook, ten render timeouts).
def test_retries_are_sized_against_the_work_they_wait_for(deployment: Deployment) -> None:
    spec = load_functions_spec()
    for kind_name, delivery in spec.delivery.items():
        assert 0 <= delivery.minimum_backoff_s <= delivery.maximum_backoff_s <= 600, kind_name
        if delivery.max_delivery_attempts is not None:
            assert 5 <= delivery.max_delivery_attempts <= 100, kind_name
    # A webhook receiver may be down an hour (and more) before delivery gives up.
    assert spec.delivery["notifier"].configured_retry_s >= 3600
    # A render refused because every instance is busy (429) keeps trying while many
    # renders in flight finish (each at most a render timeout).
    render_timeouts = {fn.block("service_config").get("timeout_seconds")
                       for fn in functions(deployment).values() if kind(fn) == "render"}
    assert spec.delivery["render"].configured_retry_s >= 10 * max(render_timeouts)
    # A job refused while every fitting circuit cools down outlasts a cool-down.
    assert spec.delivery["intake"].configured_retry_s >= Settings().circuit_cooldown_s * 5


def test_function_sizing_is_functions_yaml_and_threads_match_concurrency(
        deployment: Deployment) -> None:
    spec = load_functions_spec()
    for name, fn in functions(deployment).items():
        sizing = spec.kinds[kind(fn)]
        config = fn.block("service_config")
        assert (config.get("available_memory"), config.get("available_cpu"),
                config.get("timeout_seconds"), config.get("min_instance_count"),
                config.get("max_instance_count"),
                config.get("max_instance_request_concurrency")) == (
            sizing.memory, sizing.cpu, sizing.timeout_seconds, sizing.min_instances,
            sizing.max_instances, sizing.concurrency), name
        # Python serves one request per gunicorn thread: as many threads as requests
        # (https://cloud.google.com/functions/docs/configuring/concurrency).
        assert plain_env(fn)["THREADS"] == str(sizing.concurrency), name
        # Concurrency above 1 needs a whole vCPU (same page).
        assert sizing.concurrency == 1 or float(sizing.cpu) >= 1, name
    assert spec.kinds["render"].concurrency > 1  # renders wait on providers: many at once


def test_operator_overrides_merge_over_functions_yaml(tf_config: tfconfig.Config,
                                                     tmp_path: Path) -> None:
    evaluated = tfconfig.evaluate_locals(tf_config, tmp_path, {
        "project_id": PROJECT, "functions": {"render": {"max_instances": 50}}})
    sizing = evaluated.locals["sizing"]
    assert sizing["render"]["max_instances"] == 50
    assert sizing["render"]["concurrency"] == load_functions_spec().kinds["render"].concurrency
    assert sizing["api"]["max_instances"] == load_functions_spec().kinds["api"].max_instances


def test_render_hands_off_before_its_timeout(deployment: Deployment) -> None:
    for name, fn in functions(deployment).items():
        if kind(fn) != "render":
            continue
        timeout = fn.block("service_config").get("timeout_seconds")
        deadline = float(plain_env(fn)["AIPROD_RENDER_DEADLINE_S"])
        assert 0 < deadline <= timeout - 30, f"{name}: hand-off at {deadline}s, timeout {timeout}s"


@pytest.mark.parametrize(("override", "message"), [
    ({"functions": {"render": {"timeout_seconds": 600}}}, "ack deadline"),
    ({"functions": {"render": {"timeout_seconds": 100}}, "render_handoff_margin_seconds": 60},
     "at least 60 s of rendering"),
    ({"daily_budget_warn_usd": 150}, "at most daily_budget_usd"),
    ({"cache_ttl_days": 30}, "less than output_retention_days"),
    ({"cache_scope": "everyone"}, "key or deployment"),
    ({"secret_version": "newest"}, "secret_version"),
    ({"python_runtime": "python311"}, "python_runtime"),
    ({"functions": {"renderer": {"max_instances": 5}}}, "function kind of functions.yaml"),
    ({"functions": {"dead_letter": {"concurrency": 4}}}, "needs cpu >= 1"),
])
def test_variables_reject_unsafe_values(tf_config: tfconfig.Config, tmp_path: Path,
                                        override: dict[str, Any], message: str) -> None:
    with pytest.raises(tfconfig.TerraformError, match=message):
        tfconfig.evaluate_locals(tf_config, tmp_path, {"project_id": PROJECT, **override})


def test_variables_are_described_and_typed(tf_config: tfconfig.Config) -> None:
    for name, body in tf_config.variables.items():
        assert tfconfig.label(body.get("description", "")).strip(), f"var.{name} has no description"
        assert "type" in body, f"var.{name} has no type"


# --- Environment and secrets ---------------------------------------------------------------

def readers(field: str, fns: dict[str, Instance]) -> set[str]:
    """The deployed functions that read a setting."""
    if field in SCOPED_TO_KIND:
        return {n for n, fn in fns.items() if kind(fn) == SCOPED_TO_KIND[field]}
    for provider in {b.provider for b in CATALOG.backends}:
        if field.startswith(f"{provider}_"):
            return {n for n, fn in fns.items() if kind(fn) == "render"
                    and CATALOG.get(str(backend_of(fn))).provider == provider}
    return set(fns)


def test_every_setting_is_set_where_it_is_read_or_deliberately_defaulted(
        deployment: Deployment) -> None:
    fns = functions(deployment)
    assert {"api", "intake", "dead-letter"} <= set(fns)
    known = {env_name(f) for f in Settings.model_fields}
    assert set(DEFAULTED) <= set(Settings.model_fields), "DEFAULTED names an unknown setting"
    problems: list[str] = []
    for field in Settings.model_fields:
        name = env_name(field)
        wanted = readers(field, fns)
        for fn_name, fn in fns.items():
            plain, secret = plain_env(fn), secret_env(fn)
            is_set = name in plain or name in secret
            if field in DEFAULTED:
                if is_set:
                    problems.append(f"{fn_name}: {name} is set but listed as DEFAULTED")
            elif fn_name in wanted and not is_set:
                problems.append(f"{fn_name}: reads {name} but it is not set")
            elif fn_name not in wanted and is_set:
                problems.append(f"{fn_name}: {name} is set on a function that does not read it")
    for fn_name, fn in fns.items():
        for name in set(plain_env(fn)) | set(secret_env(fn)):
            if name not in known | SERVER_VARIABLES:
                problems.append(f"{fn_name}: {name} is not a setting the code reads (typo?)")
    assert not problems, "\n".join(problems)


def test_values_match_what_the_code_expects(deployment: Deployment, evaluated:
                                            tfconfig.Evaluated) -> None:
    defaults = Settings.model_construct()
    bucket = deployment.instances("google_storage_bucket", "outputs")[None].get("name")
    for name, fn in functions(deployment).items():
        env = plain_env(fn)
        assert env["GOOGLE_CLOUD_PROJECT"] == PROJECT, name
        assert env["AIPROD_INTAKE_TOPIC"] == defaults.intake_topic, name
        assert env["AIPROD_EVENTS_TOPIC"] == defaults.events_topic, name
        assert env["AIPROD_OUTPUT_URI"] == f"gs://{bucket}/outputs", name
        assert env["AIPROD_FIRESTORE_DATABASE"] == deployment.instances(
            "google_firestore_database", "main")[None].get("name")
        settings = Settings.model_validate({k: v for k, v in env.items()})
        assert settings.daily_budget_usd == evaluated.vars["daily_budget_usd"]


def test_no_secret_is_a_plain_variable(deployment: Deployment, tf_config: tfconfig.Config) -> None:
    secret_names = {env_name(f) for f in Settings.model_fields if is_secret(f)}
    secret_names |= set(deployment.evaluated.locals["secrets"].values())
    assert {"AIPROD_RUNWAY_API_KEY", "AIPROD_REPLICATE_API_TOKEN"} <= secret_names
    for name, fn in functions(deployment).items():
        leaked = {k for k in plain_env(fn) if k in secret_names or SECRET_NAME.search(k)}
        assert not leaked, f"{name} has secrets as plain variables: {leaked}"
        for key, secret in secret_env(fn).items():
            resolved = deployment.resolve(secret)
            assert resolved.type == "google_secret_manager_secret", (name, key)
    # Secret values never pass through Terraform (state, tfvars).
    assert not [k for k in tf_config.resources if k[0] == "google_secret_manager_secret_version"]


def test_each_render_function_gets_only_its_providers_secret(deployment: Deployment) -> None:
    wanted = {"runway": {"AIPROD_RUNWAY_API_KEY"}, "replicate": {"AIPROD_REPLICATE_API_TOKEN"},
              "veo": set()}
    for name, fn in functions(deployment).items():
        expected = wanted[CATALOG.get(str(backend_of(fn))).provider] if kind(fn) == "render" \
            else {"AIPROD_WEBHOOK_SIGNING_KEY"} if kind(fn) == "notifier" else set()
        assert set(secret_env(fn)) == expected, name


# --- Identity and least privilege ----------------------------------------------------------

def members(deployment: Deployment, rtype: str, rname: str) -> list[tuple[Instance, Any]]:
    return [(i, i.get("member")) for i in deployment.instances(rtype, rname).values()]


def account_of(deployment: Deployment, member: Any) -> str:
    """runtime/<function>, invoker/<function>, build, or the literal member."""
    if isinstance(member, Ref) and member.type == "google_service_account":
        return f"{member.name}/{member.key}" if member.key is not None else member.name
    return str(member)


def test_each_function_has_its_own_service_account(deployment: Deployment) -> None:
    accounts = {}
    for name, fn in functions(deployment).items():
        ref = fn.block("service_config").get("service_account_email")
        assert isinstance(ref, Ref), name
        assert (ref.type, ref.name, ref.key) == ("google_service_account", "runtime", fn.key)
        accounts[name] = deployment.resolve(ref).get("account_id")
    assert len(set(accounts.values())) == len(accounts)


def test_push_subscriptions_may_invoke_their_own_function_only(deployment: Deployment) -> None:
    invokers: dict[str, set[str]] = {}
    for binding in deployment.all_of_type("google_cloud_run_v2_service_iam_member"):
        assert binding.get("role") == "roles/run.invoker"
        service = binding.get("name")
        target = deployment.resolve(service).key
        invokers.setdefault(account_of(deployment, binding.get("member")), set()).add(target)
    fns = functions(deployment)
    for name, fn in fns.items():
        ingress = fn.block("service_config").get("ingress_settings")
        if kind(fn) == "api":
            assert ingress == "ALLOW_ALL"
            continue
        assert ingress == "ALLOW_INTERNAL_ONLY", f"{name} must not be reachable from the internet"
        allowed = "scheduler" if kind(fn) == "watchdog" else "invoker/"
        assert not [m for m, targets in invokers.items() if name in targets
                    and not m.startswith(allowed)], f"{name} is invocable by others"
    for sub in deployment.instances(SUBSCRIPTION, "push").values():
        oidc = sub.block("push_config").block("oidc_token")
        account = account_of(deployment, oidc.get("service_account_email"))
        target = deployment.resolve(oidc.get("audience")).key
        assert invokers.get(account) == {target}, f"{sub.get('name')}: {account} invokes " \
            f"{invokers.get(account)}"
    assert invokers.get("allUsers", {"api"}) == {"api"}
    assert invokers["scheduler"] == {"watchdog"}


def test_cloud_scheduler_calls_the_watchdog_with_its_own_identity(
        deployment: Deployment, evaluated: tfconfig.Evaluated) -> None:
    (job,) = deployment.instances("google_cloud_scheduler_job", "watchdog").values()
    target = job.block("http_target")
    oidc = target.block("oidc_token")
    assert target.get("http_method") == "POST"
    assert deployment.resolve(target.get("uri")).key == "watchdog"
    assert deployment.resolve(oidc.get("audience")).key == "watchdog"
    assert account_of(deployment, oidc.get("service_account_email")) == "scheduler"
    # Every minute by default, as the code's AIPROD_WATCHDOG_INTERVAL_S default says.
    assert evaluated.locals["watchdog_schedule"] == "*/1 * * * *"
    assert evaluated.vars["watchdog_interval_seconds"] == Settings().watchdog_interval_s
    assert evaluated.vars["watchdog_stale_seconds"] == Settings().watchdog_stale_s
    assert job.block("retry_config").get("retry_count") == 0
    fn = functions(deployment)["watchdog"]
    assert job.get("attempt_deadline") == f"{fn.block('service_config').get('timeout_seconds')}s"
    env = plain_env(fn)
    assert float(env["AIPROD_WATCHDOG_INTERVAL_S"]) == evaluated.vars["watchdog_interval_seconds"]
    apis = {i.key for i in deployment.instances("google_project_service", "api").values()}
    assert "cloudscheduler.googleapis.com" in apis


@pytest.mark.parametrize(("override", "message"), [
    ({"watchdog_interval_seconds": 420}, r"divides\s+an\s+hour"),
    ({"watchdog_stale_seconds": 60}, r"maximum\s+retry\s+backoff"),
    ({"watchdog_interval_seconds": 1800}, r"watchdog_interval_seconds\s+\+\s+60"),
])
def test_watchdog_variables_reject_unsafe_values(tf_config: tfconfig.Config, tmp_path: Path,
                                                 override: dict[str, Any], message: str) -> None:
    with pytest.raises(tfconfig.TerraformError, match=message):
        tfconfig.evaluate_locals(tf_config, tmp_path, {"project_id": PROJECT, **override})


def test_roles_are_the_least_each_function_needs(deployment: Deployment) -> None:
    fns = functions(deployment)
    project_roles: dict[str, set[str]] = {}
    for binding in deployment.all_of_type("google_project_iam_member"):
        project_roles.setdefault(account_of(deployment, binding.get("member")), set()).add(
            binding.get("role"))
    for account, roles in project_roles.items():
        assert not roles & {"roles/owner", "roles/editor", "roles/viewer"}, account
    for name, fn in fns.items():
        expected = {"roles/datastore.user"}
        if kind(fn) == "render" and CATALOG.get(str(backend_of(fn))).provider == "veo":
            expected.add("roles/aiplatform.user")
        assert project_roles.pop(f"runtime/{name}") == expected, name
    assert project_roles == {"build": {"roles/run.builder"}}

    published: dict[str, set[str]] = {}
    for binding in deployment.instances("google_pubsub_topic_iam_member", "publisher").values():
        assert binding.get("role") == "roles/pubsub.publisher"
        account = account_of(deployment, binding.get("member"))
        topic = deployment.resolve(binding.get("topic")).get("name")
        published.setdefault(account, set()).add(topic)
    render_topics = {b.topic for b in CATALOG.backends}
    assert "runtime/notifier" not in published
    # The dead-letter function asks a backend to stop a running task (services/cancel.py).
    for name in ("api", "intake", "dead-letter", "watchdog",
                 *(f"render-{b.name}" for b in CATALOG.backends)):
        assert published[f"runtime/{name}"] == render_topics | {"job-events"}, name

    accessors = {}
    for binding in deployment.instances("google_secret_manager_secret_iam_member",
                                        "accessor").values():
        assert binding.get("role") == "roles/secretmanager.secretAccessor"
        accessors.setdefault(account_of(deployment, binding.get("member")), set()).add(
            deployment.resolve(binding.get("secret_id")).key)
    for name, fn in fns.items():
        used = {deployment.resolve(s).key for s in secret_env(fn).values()}
        assert accessors.get(f"runtime/{name}", set()) == used, name

    bucket_roles: dict[str, set[str]] = {}
    for b in deployment.instances("google_storage_bucket_iam_member", "outputs").values():
        bucket_roles.setdefault(account_of(deployment, b.get("member")), set()).add(
            b.get("role"))
    # The api signs download URLs (read) and, with intake, stages uploaded images
    # create-only (services.admission.stage_upload uses ifGenerationMatch=0).
    assert bucket_roles.pop("runtime/api") == {"roles/storage.objectViewer",
                                               "roles/storage.objectCreator"}
    assert bucket_roles.pop("runtime/intake") == {"roles/storage.objectCreator"}
    assert bucket_roles == {f"runtime/render-{b.name}": {"roles/storage.objectUser"}
                            for b in CATALOG.backends}

    signers = {account_of(deployment, b.get("member"))
               for b in deployment.instances("google_service_account_iam_member",
                                             "self_signer").values()}
    # Runway and Replicate fetch an upload too large to send inline by a signed URL.
    assert signers == {"runtime/api"} | {f"runtime/render-{b.name}" for b in CATALOG.backends
                                         if b.provider in ("runway", "replicate")}


def test_pubsub_service_agent_can_dead_letter(deployment: Deployment,
                                              tf_config: tfconfig.Config) -> None:
    """The agent's bindings name the service identity Terraform creates (google-beta),
    so they wait for it: in a fresh project the agent may not exist yet, and IAM
    refuses a binding to an account that does not exist."""
    (identity,) = deployment.instances("google_project_service_identity", "pubsub").values()
    assert identity.get("service") == "pubsub.googleapis.com"
    assert provider_of("google_project_service_identity",
                       tf_config.resources[("google_project_service_identity", "pubsub")]) == (
        "google-beta")
    assert "${google_project_service.api[\"pubsub.googleapis.com\"]}" in identity.body[
        "depends_on"]
    agent_bindings = [
        *deployment.instances("google_pubsub_topic_iam_member", "dead_letter_publisher").values(),
        *deployment.instances("google_pubsub_subscription_iam_member",
                              "dead_letter_subscriber").values(),
        *deployment.instances("google_service_account_iam_member",
                              "pubsub_agent_token_creator").values()]
    assert agent_bindings
    for binding in agent_bindings:
        member = binding.get("member")
        assert isinstance(member, Ref), binding.address
        assert member.path == ("member",), binding.address
        assert deployment.resolve(member) is identity, binding.address
        assert "${google_project_service_identity.pubsub}" in binding.body["depends_on"]
    publishers = {deployment.resolve(b.get("topic")).get("name")
                  for b in deployment.instances("google_pubsub_topic_iam_member",
                                                "dead_letter_publisher").values()
                  if b.get("role") == "roles/pubsub.publisher"}
    subscribers = {deployment.resolve(b.get("subscription")).get("name")
                   for b in deployment.instances("google_pubsub_subscription_iam_member",
                                                 "dead_letter_subscriber").values()
                   if b.get("role") == "roles/pubsub.subscriber"}
    for sub in deployment.instances(SUBSCRIPTION, "push").values():
        for policy in sub.blocks("dead_letter_policy"):
            assert deployment.resolve(policy.get("dead_letter_topic")).get("name") in publishers
            assert sub.get("name") in subscribers


def test_the_api_that_signs_download_urls_is_enabled(deployment: Deployment) -> None:
    """The API signs download URLs as its own service account through signBlob of
    the IAM Service Account Credentials API (google-auth's iam.Signer calls
    iamcredentials.googleapis.com), which a project must enable:
    https://cloud.google.com/iam/docs/reference/credentials/rest/v1/projects.serviceAccounts/signBlob"""
    import inspect

    from google.auth import iam

    from aiprod.adapters import storage

    assert "iam.Signer(" in inspect.getsource(storage.GcsOutputStore._iam_signing)
    # google-auth signs through https://iamcredentials.<universe>/...:signBlob
    assert iam._IAM_SIGN_ENDPOINT.startswith("https://iamcredentials.googleapis.com/")
    assert iam._IAM_SIGN_ENDPOINT.endswith(":signBlob")
    services = {i.get("service") for i in deployment.instances("google_project_service",
                                                               "api").values()}
    assert "iamcredentials.googleapis.com" in services
    assert "iam.googleapis.com" in services  # the service accounts themselves



# Resource types whose API a new project does not have enabled: creating one before
# `google_project_service.api` has enabled its API fails with SERVICE_DISABLED. Cloud
# Logging, Cloud Monitoring and Cloud Storage are enabled by default in a project
# created with the console or gcloud, so their resources need no ordering:
# https://cloud.google.com/service-usage/docs/enabled-service#default
API_OF_TYPE = {
    "google_service_account": "iam.googleapis.com",
    "google_pubsub_": "pubsub.googleapis.com",
    "google_secret_manager_": "secretmanager.googleapis.com",
    "google_cloud_scheduler_": "cloudscheduler.googleapis.com",
    "google_cloudfunctions2_": "cloudfunctions.googleapis.com",
    "google_cloud_run_v2_": "run.googleapis.com",
    "google_firestore_": "firestore.googleapis.com",
}
_DEPENDENCY = re.compile(r"(?<![\w.])(local|google_\w+|time_sleep)\.(\w+)(?:\[\"([^\"]*)\"\])?")


def apis_ensured(config: tfconfig.Config) -> dict[tuple[str, str], set[str]]:
    """The APIs each resource is created after: through `depends_on` or a reference,
    directly or through the resources and locals it names (Terraform orders the
    whole chain). "*" stands for every API `google_project_service.api` enables."""
    def named(body: Any) -> set[tuple[str, str, str]]:
        return {m for text in _strings(body) for m in _DEPENDENCY.findall(text)}

    memo: dict[tuple[str, str], set[str]] = {}

    def ensured(kind: str, name: str, key: str, seen: frozenset[tuple[str, str]]) -> set[str]:
        if (kind, name) == ("google_project_service", "api"):
            return {key or "*"}
        if (kind, name) in seen:
            return set()
        if kind != "local" and (kind, name) in memo:
            return memo[(kind, name)]
        body = config.locals.get(name) if kind == "local" else config.resources.get((kind, name))
        result = {api for dep in named(body) for api in ensured(*dep, seen | {(kind, name)})}
        if kind != "local":
            memo[(kind, name)] = result
        return result

    return {key: ensured(*key, "", frozenset()) for key in config.resources}


def test_every_resource_waits_for_its_api(tf_config: tfconfig.Config) -> None:
    """In an empty project the first apply creates everything at once: a service
    account, topic or secret created while its API is still being enabled fails, so
    each resource of a service that is off by default depends on enabling it."""
    ensured = apis_ensured(tf_config)
    missing = []
    for (rtype, rname), apis in ensured.items():
        needed = next((api for prefix, api in API_OF_TYPE.items() if rtype.startswith(prefix)),
                      None)
        if needed and not apis & {needed, "*"}:
            missing.append(f"{rtype}.{rname} needs {needed}")
    assert not missing, missing
    # The check sees what is missing: a service account with no ordering at all.
    bare = dict(tf_config.resources)
    bare[("google_service_account", "probe")] = {"account_id": "probe"}
    probe = apis_ensured(tfconfig.Config(files={}, resources=bare, locals=tf_config.locals))
    assert probe[("google_service_account", "probe")] == set()

# --- Data ------------------------------------------------------------------------------

def test_the_watchdogs_query_has_its_composite_index(deployment: Deployment) -> None:
    """Production Firestore refuses a query with an equality (`in`) filter and a range
    and order on another field unless a composite index serves it
    (https://cloud.google.com/firestore/docs/query-data/index-overview); the emulator
    enforces no index ("the emulator does not track composite indexes and instead
    will execute any valid query",
    https://firebase.google.com/docs/emulator-suite/connect_firestore), so only this
    test would notice a missing one."""
    from aiprod.adapters.store import JOBS, UNMOVED_QUERY_FIELDS

    (index,) = deployment.instances("google_firestore_index", "jobs_unmoved").values()
    assert index.get("collection") == JOBS
    fields = [(f.get("field_path"), f.get("order")) for f in index.blocks("fields")]
    assert fields == [*((name, "ASCENDING") for name in UNMOVED_QUERY_FIELDS),
                      ("__name__", "ASCENDING")]
    assert deployment.resolve(index.get("database")).type == "google_firestore_database"


def test_the_watchdogs_hold_scan_has_its_composite_index(deployment: Deployment) -> None:
    """The watchdog pages through old budget holds: state == HELD with a range and
    order on created_at, which production Firestore serves only from a composite
    index (https://cloud.google.com/firestore/docs/query-data/index-overview) and the
    emulator runs without one. The index names the subcollection's ID, so it serves
    budget_days/{day}/reservations of every day."""
    from aiprod.adapters.ledger import HELD_QUERY_FIELDS, RESERVATIONS

    (index,) = deployment.instances("google_firestore_index", "reservations_held").values()
    assert index.get("collection") == RESERVATIONS
    assert index.get("query_scope") in (None, "COLLECTION")
    fields = [(f.get("field_path"), f.get("order")) for f in index.blocks("fields")]
    assert fields == [*((name, "ASCENDING") for name in HELD_QUERY_FIELDS),
                      ("__name__", "ASCENDING")]
    assert deployment.resolve(index.get("database")).type == "google_firestore_database"


def test_the_callers_job_listing_has_its_composite_indexes(deployment: Deployment) -> None:
    """GET /v1/videos lists a caller's jobs: owner == X ordered by created_at, newest
    or oldest first. Production Firestore needs a composite index for each direction
    (https://cloud.google.com/firestore/docs/query-data/index-overview); the emulator
    runs the query without one."""
    from aiprod.adapters.store import JOBS, OWNED_QUERY_FIELDS

    owner, created = OWNED_QUERY_FIELDS
    indexes = deployment.instances("google_firestore_index", "jobs_owned")
    assert set(indexes) == {"ASCENDING", "DESCENDING"}
    for direction, index in indexes.items():
        assert index.get("collection") == JOBS
        fields = [(f.get("field_path"), f.get("order")) for f in index.blocks("fields")]
        assert fields == [(owner, "ASCENDING"), (created, direction), ("__name__", direction)]
        assert deployment.resolve(index.get("database")).type == "google_firestore_database"


def test_firestore_ttl_policies(deployment: Deployment) -> None:
    fields = {(f.get("collection"), f.get("field")): f
              for f in deployment.instances("google_firestore_field", "ttl").values()}
    assert set(fields) == {("idempotency_keys", "expires_at"), ("reservations", "expires_at"),
                           ("rate_limits", "expires_at"), ("render_cache", "expires_at"),
                           ("followers", "expires_at"), ("backend_stats", "expires_at")}
    for field in fields.values():
        assert field.blocks("ttl_config"), field.address
        assert deployment.resolve(field.get("database")).type == "google_firestore_database"


def test_output_bucket_is_private_uniform_and_expires_outputs(deployment: Deployment) -> None:
    bucket = deployment.instances("google_storage_bucket", "outputs")[None]
    assert bucket.get("uniform_bucket_level_access") is True
    assert bucket.get("public_access_prevention") == "enforced"
    deletes = [r for r in bucket.blocks("lifecycle_rule")
               if r.block("action").get("type") == "Delete"]
    assert [r.block("condition").get("age") for r in deletes] == [30]
    # The rule covers the whole bucket (no prefix condition), so staged uploads under
    # jobs/<id>/input/ go with the job's output (adapters/storage.py).
    for rule in deletes:
        condition = rule.block("condition")
        assert condition.get("matches_prefix") in (None, [])
        assert condition.get("matches_suffix") in (None, [])


def test_monitoring_reads_monitoring_yaml(tf_config: tfconfig.Config, tmp_path: Path) -> None:
    """monitoring.yaml is read with yamldecode, not copied (tests/infra/test_monitoring.py
    checks what is built from it)."""
    spec = yaml.safe_load((tfconfig.REPO / "monitoring.yaml").read_text())
    spec["metrics"].append({"name": "jobs_finished", "kind": "counter", "unit": "1",
                            "labels": ["backend"], "description": "x"})
    evaluated = tfconfig.evaluate_locals(tf_config, tmp_path, {"project_id": PROJECT},
                                         monitoring=yaml.safe_dump(spec))
    assert evaluated.locals["monitoring"]["metrics"][-1]["name"] == "jobs_finished"
    assert evaluated.locals["log_metrics"]["jobs_finished"]["name"] == "aiprod_jobs_finished"
    with pytest.raises(tfconfig.TerraformError, match=r"(?i)yaml"):
        tfconfig.evaluate_locals(tf_config, tmp_path / "bad", {"project_id": PROJECT},
                                 monitoring="metrics: [unclosed\n")


def test_outputs(tf_config: tfconfig.Config) -> None:
    assert {"api_url", "intake_topic", "events_topic", "topics", "output_bucket"} <= set(
        tf_config.outputs)


# --- Bootstrap, and the public API ---------------------------------------------------------

PUBLIC_MEMBERS = {"allUsers", "allAuthenticatedUsers"}


def public_bindings(deployment: Deployment) -> list[str]:
    return [i.address for (rtype, rname) in deployment.config.resources
            for i in deployment.instances(rtype, rname).values()
            if "member" in i.body and i.get("member") in PUBLIC_MEMBERS]


def test_api_public_is_the_only_way_to_grant_all_users(
        deployment: Deployment, tf_config: tfconfig.Config, tmp_path: Path) -> None:
    """Where an organisation policy (Domain Restricted Sharing,
    iam.allowedPolicyMemberDomains) forbids allUsers, api_public = false must leave no
    binding to it at all, or the apply fails."""
    assert public_bindings(deployment) == [
        "google_cloud_run_v2_service_iam_member.api_public[0]"]
    private = Deployment(tf_config, tfconfig.evaluate_locals(
        tf_config, tmp_path, {"project_id": PROJECT, "api_public": False}))
    assert public_bindings(private) == []


def test_the_deploying_guide_bootstraps_what_terraform_needs_first() -> None:
    """Terraform enables APIs through Service Usage and edits IAM through Resource
    Manager: both must be on before the first plan; the guide says so, in order."""
    guide = (tfconfig.REPO / "docs" / "deploying.md").read_text()
    enable = re.search(r"gcloud services enable ([^\n\\]+)", guide)
    assert enable, "no bootstrap `gcloud services enable`"
    assert {"serviceusage.googleapis.com", "cloudresourcemanager.googleapis.com"} <= set(
        enable.group(1).split())
    steps = ["gcloud services enable", "gcloud storage buckets create",
             "gs://$DEPLOY_BUCKET/terraform.tfvars", "gcloud secrets versions add",
             "terraform apply tfplan", "time_sleep.log_metrics_ready", "/healthz"]
    positions = [guide.find(s) for s in steps]
    assert -1 not in positions, dict(zip(steps, positions, strict=True))
    assert positions == sorted(positions), "the guide's steps are out of order"
    assert guide.find("gcloud services enable") < guide.find("terraform init")
    for needed in ("iam.allowedPolicyMemberDomains", "api_public = false", "allUsers"):
        assert needed in guide, needed
    readme = (tfconfig.REPO / "README.md").read_text()
    assert "docs/deploying.md" in readme


def test_veo_can_read_staged_images_through_its_service_agent(
        deployment: Deployment, tf_config: tfconfig.Config) -> None:
    """Veo is handed a staged upload as its gs:// URI; Vertex AI reads it as the
    project's Vertex AI service agent (not as the calling function), so that agent
    exists explicitly and may read the output bucket where inputs are staged."""
    (identity,) = deployment.instances("google_project_service_identity", "vertex").values()
    assert identity.get("service") == "aiplatform.googleapis.com"
    assert provider_of("google_project_service_identity",
                       tf_config.resources[("google_project_service_identity", "vertex")]) == (
        "google-beta")
    (grant,) = deployment.instances("google_storage_bucket_iam_member",
                                    "vertex_reads_staged_inputs").values()
    assert grant.get("role") == "roles/storage.objectViewer"
    assert deployment.resolve(grant.get("member")) is identity
    assert deployment.resolve(grant.get("bucket")) is next(iter(
        deployment.instances("google_storage_bucket", "outputs").values()))
