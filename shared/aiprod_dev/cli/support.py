"""What the CLI's commands share: where the local stack's state is, and which
Firestore a command that reads it directly should talk to."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from aiprod_dev.localstack import control


def state_dir() -> Path:
    return Path(os.environ.get("AIPROD_DEV_STATE_DIR", str(control.DEFAULT_STATE_DIR)))


def firestore_client(project: str | None, database: str | None) -> tuple[Any, str]:
    """The local stack's emulator when one runs (and no --project is given), else the
    project's database with Application Default Credentials; and a phrase naming it."""
    from google.cloud import firestore

    if project is None and not os.environ.get("FIRESTORE_EMULATOR_HOST"):
        state = control.status(state_dir())
        if state is not None:
            os.environ.update(state["env"])
            project = str(state["project"])
    project = project or os.environ.get("GOOGLE_CLOUD_PROJECT")
    if not project:
        raise click.ClickException("no local stack is running and no project is given: pass "
                                   "--project or set GOOGLE_CLOUD_PROJECT")
    database = database or os.environ.get("AIPROD_FIRESTORE_DATABASE", "(default)")
    where = ("the local stack's emulator" if os.environ.get("FIRESTORE_EMULATOR_HOST")
             else f"project {project}")
    return firestore.Client(project=project, database=database), f"{where}, database {database}"
