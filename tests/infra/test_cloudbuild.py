"""cloudbuild.yaml: the steps, their images and order, and apply only on main."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra import tfconfig

BUILD = yaml.safe_load((tfconfig.REPO / "cloudbuild.yaml").read_text())
STEPS: list[dict[str, Any]] = BUILD["steps"]
ORDER = ["install", "lint", "test", "package", "upload", "terraform-init", "terraform-vars",
         "terraform-plan", "terraform-apply"]
EMULATORS_IMAGE = "gcr.io/google.com/cloudsdktool/google-cloud-cli:emulators"


def step(step_id: str) -> dict[str, Any]:
    (found,) = [s for s in STEPS if s.get("id") == step_id]
    return found


def command(step_id: str) -> str:
    s = step(step_id)
    return " ".join([s.get("entrypoint", ""), *s.get("args", [])])


def substitute(text: str, values: dict[str, str]) -> str:
    """Cloud Build's own substitution: $NAME and ${NAME}; $$ is a literal $."""
    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return values[match.group(1) or match.group(2)]
    return re.sub(r"\$\$|\$\{(\w+)\}|\$(\w+)", one, text)


def test_steps_run_in_order() -> None:
    ids = [s.get("id") for s in STEPS]
    assert [i for i in ids if i in ORDER] == ORDER
    assert ids.index("terraform-binary") < ids.index("test")
    assert not [s for s in STEPS if "waitFor" in s], "steps must run one after the other"


def test_images() -> None:
    version = BUILD["substitutions"]["_TERRAFORM_VERSION"]
    for step_id in ("terraform-binary", "terraform-init", "terraform-plan", "terraform-apply"):
        assert step(step_id)["name"] == "hashicorp/terraform:${_TERRAFORM_VERSION}", step_id
    # The same Terraform as the one the offline tests run, within versions.tf's range.
    local = subprocess.run([tfconfig.terraform(), "version"], capture_output=True, text=True,
                           env=tfconfig.terraform_env()).stdout
    assert f"v{version}" in local.splitlines()[0]
    for step_id in ("install", "lint", "test", "package"):
        assert step(step_id)["name"] == EMULATORS_IMAGE, step_id  # gcloud, Java, emulators
    for step_id in ("upload", "terraform-vars"):
        assert step(step_id)["name"].startswith(
            "gcr.io/google.com/cloudsdktool/google-cloud-cli"), step_id


def test_tests_run_with_the_emulators_and_terraform() -> None:
    assert "make install" in command("install")
    assert ".venv/bin/ruff check ." in command("lint")
    assert ".venv/bin/mypy" in command("lint")
    test = command("test")
    assert "make test" in test
    assert test.index("/workspace/.tools/bin") < test.index("make test")
    assert "/workspace/.tools/bin/terraform" in command("terraform-binary")


def test_package_upload_and_terraform_use_the_same_archive() -> None:
    assert "tools/package.py --output dist/function-source.zip" in command("package")
    upload = step("upload")
    assert upload["args"][:3] == ["storage", "cp", "dist/function-source.zip"]
    assert upload["args"][3].startswith("gs://${_DEPLOY_BUCKET}/")
    assert "${COMMIT_SHA}" in upload["args"][3]
    # Terraform's default archive path, seen from terraform/.
    assert "../dist/function-source.zip" in (tfconfig.TERRAFORM_DIR / "topology.tf").read_text()
    for step_id in ("terraform-init", "terraform-plan", "terraform-apply"):
        assert step(step_id).get("dir") == "terraform"


def test_substitutions() -> None:
    subs = BUILD["substitutions"]
    assert {"_PROJECT_ID", "_DEPLOY_BUCKET"} <= set(subs)
    assert BUILD["options"]["dynamicSubstitutions"] is True  # _PROJECT_ID: ${PROJECT_ID}
    plan = step("terraform-plan")["args"]
    assert "-var=project_id=${_PROJECT_ID}" in plan
    assert "-backend-config=bucket=${_DEPLOY_BUCKET}" in step("terraform-init")["args"]
    text = (tfconfig.REPO / "cloudbuild.yaml").read_text()
    used = set(re.findall(r"\$\{(_\w+)\}", text))
    assert used == set(subs), "every user substitution is defined and used"


def test_plan_is_saved_and_applied_as_planned() -> None:
    assert "-out=tfplan" in step("terraform-plan")["args"]
    assert "terraform apply -input=false tfplan" in command("terraform-apply")


def stand_in(tmp_path: Path, name: str, body: str) -> dict[str, str]:
    """An executable `name` on PATH that records its arguments in tmp_path/calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / name
    fake.write_text(f'#!/bin/sh\necho "{name} $@" >> {tmp_path / "calls"}\n{body}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def run_step(step_id: str, tmp_path: Path, env: dict[str, str], branch: str = "main",
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    s = step(step_id)
    script = substitute(s["args"][-1], {"BRANCH_NAME": branch, "_DEPLOY_BUCKET": "my-deploy",
                                            "_PROJECT_ID": "my-project"})
    return subprocess.run([s["entrypoint"], *s["args"][:-1], script], env=env,
                          capture_output=True, text=True, cwd=cwd or tmp_path)


def calls(tmp_path: Path) -> str:
    return (tmp_path / "calls").read_text() if (tmp_path / "calls").exists() else ""


@pytest.mark.parametrize(("branch", "applies"), [("main", True), ("feature/x", False),
                                                 ("", False), ("main-2", False)])
def test_apply_runs_only_on_main(tmp_path: Path, branch: str, applies: bool) -> None:
    """Run the apply step's script with a stand-in terraform that records its arguments."""
    env = stand_in(tmp_path, "terraform", "")
    assert step("terraform-apply")["entrypoint"] == "sh"
    (tmp_path / "deploy.tfvars").write_text('project_id = "p"\n')
    run = run_step("terraform-apply", tmp_path, env, branch)
    assert run.returncode == 0, run.stderr
    assert (calls(tmp_path) == "terraform apply -input=false tfplan\n") is applies, calls(
        tmp_path)


# --- The operator's variables ------------------------------------------------------------

def test_plan_uses_the_operators_variables() -> None:
    """Without them an apply from CI would reset notification channels, budgets and
    sizing to the defaults of variables.tf."""
    assert ORDER.index("terraform-vars") < ORDER.index("terraform-plan")
    plan = step("terraform-plan")["args"]
    assert "-var-file=deploy.tfvars" in plan
    # The project is the build's (a -var wins over a -var-file); the vars step has
    # refused a file naming another one.
    assert plan.index("-var-file=deploy.tfvars") < plan.index("-var=project_id=${_PROJECT_ID}")
    # Every other setting is the file's: no build default overrides it (a -var=region
    # from a trigger left at us-central1 would move an operator's europe-west1 functions).
    assert [a for a in plan if a.startswith("-var=")] == ["-var=project_id=${_PROJECT_ID}"]


def test_the_variables_come_from_the_deploy_bucket(tmp_path: Path) -> None:
    (tmp_path / "terraform").mkdir()
    env = stand_in(tmp_path, "gcloud", 'echo "x = 1" > "$4"')
    run = run_step("terraform-vars", tmp_path, env)
    assert run.returncode == 0, run.stderr
    assert calls(tmp_path) == ("gcloud storage cp gs://my-deploy/terraform.tfvars "
                               "terraform/deploy.tfvars\n")
    assert (tmp_path / "terraform" / "deploy.tfvars").read_text() == "x = 1\n"
    # The docs say where the file lives.
    docs = (tfconfig.REPO / "docs" / "deploying.md").read_text()
    assert "gs://$DEPLOY_BUCKET/terraform.tfvars" in docs


@pytest.mark.parametrize(("tfvars", "accepted"), [
    ('project_id = "my-project"\nregion = "europe-west1"\n', True),
    ('region = "europe-west1"\n', True),
    ('  project_id    =   "someone-else"  # copied from staging\n', False),
])
def test_a_file_for_another_project_is_refused(tmp_path: Path, tfvars: str,
                                               accepted: bool) -> None:
    (tmp_path / "terraform").mkdir()
    (tmp_path / "file.tfvars").write_text(tfvars)
    env = stand_in(tmp_path, "gcloud", f'cp {tmp_path / "file.tfvars"} "$4"')
    run = run_step("terraform-vars", tmp_path, env)
    assert (run.returncode == 0) is accepted, run.stderr
    if not accepted:
        assert "deploys project 'someone-else'" in run.stderr
        assert "'my-project'" in run.stderr


def test_without_the_variables_the_build_stops_with_a_clear_message(tmp_path: Path) -> None:
    (tmp_path / "terraform").mkdir()
    env = stand_in(tmp_path, "gcloud", "echo 'ERROR: (gcloud) not found' >&2; exit 1")
    run = run_step("terraform-vars", tmp_path, env)
    assert run.returncode != 0
    assert "gs://my-deploy/terraform.tfvars is missing" in run.stderr
    assert "docs/deploying.md" in run.stderr
    assert not (tmp_path / "terraform" / "deploy.tfvars").exists()


def test_apply_refuses_without_the_variables(tmp_path: Path) -> None:
    env = stand_in(tmp_path, "terraform", "")
    run = run_step("terraform-apply", tmp_path, env, "main")
    assert run.returncode != 0
    assert "refusing to apply defaults" in run.stderr
    assert calls(tmp_path) == "", "terraform must not run"


def test_the_build_outlasts_the_first_applys_wait(evaluated: tfconfig.Evaluated) -> None:
    """The first apply sleeps between log-based metrics and alert policies
    (terraform/monitoring.tf); the build's timeout must leave room for it and
    for the tests and the rest of the apply."""
    wait = int(evaluated.locals["log_metrics_wait"].removesuffix("s"))
    timeout = int(BUILD["timeout"].removesuffix("s"))
    assert timeout - wait >= 1800, (timeout, wait)
