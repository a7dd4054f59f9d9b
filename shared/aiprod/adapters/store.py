"""Firestore persistence for jobs. Reads and writes documents; decides nothing.

Job documents change only inside `mutate`, a transaction on that one document:
contention is per job (a few writers at most), so optimistic retries are cheap.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from aiprod.adapters.retries import COMMIT_RETRY
from aiprod.domain.job import STORED, Job, JobStatus

T = TypeVar("T")

JOBS = "jobs"
# The fields of the watchdog's query, in the order of its composite index
# (terraform/firestore.tf, google_firestore_index.jobs_unmoved).
UNMOVED_QUERY_FIELDS = ("status", "updated_at")
# The fields of a caller's job listing (GET /v1/videos), in the order of its composite
# indexes, one per direction (terraform/firestore.tf, google_firestore_index.jobs_owned).
OWNED_QUERY_FIELDS = ("owner", "created_at")


class JobStore(Protocol):
    def create(self, job: Job) -> bool:
        """Store a new job; False if a job with that id already exists."""
        ...

    def get(self, job_id: str) -> Job | None: ...

    def mutate(self, job_id: str, change: Callable[[Job], T]) -> tuple[Job, T] | None:
        """Apply `change` to the job atomically; None if the job does not exist."""
        ...

    def unmoved(self, statuses: Sequence[JobStatus], before: dt.datetime, limit: int,
                cursor: object | None = None) -> tuple[list[Job], object | None]:
        """Jobs in `statuses` last updated before `before`, oldest first, `limit` at a
        time; pass the returned cursor back for the next page (None: no more)."""
        ...

    def owned(self, owner: str, limit: int, after: str | None = None,
              newest_first: bool = True) -> tuple[list[Job], bool]:
        """The owner's jobs by creation time, `limit` at a time, starting after job
        `after` (one of the owner's); and whether more follow."""
        ...


def job_to_doc(job: Job) -> dict[str, Any]:
    return job.model_dump(mode="python", by_alias=True)


def job_from_doc(doc: dict[str, Any]) -> Job:
    return Job.model_validate(doc, context=STORED)


class FirestoreJobStore:
    def __init__(self, client: firestore.Client) -> None:
        self._client = client
        self._jobs = client.collection(JOBS)

    def create(self, job: Job) -> bool:
        try:
            self._jobs.document(job.id).create(job_to_doc(job), retry=COMMIT_RETRY)
        except gexc.AlreadyExists:
            return False
        return True

    def get(self, job_id: str) -> Job | None:
        snapshot = self._jobs.document(job_id).get()
        return job_from_doc(snapshot.to_dict() or {}) if snapshot.exists else None

    def mutate(self, job_id: str, change: Callable[[Job], T]) -> tuple[Job, T] | None:
        ref = self._jobs.document(job_id)

        @firestore.transactional
        def run(transaction: firestore.Transaction) -> tuple[Job, T] | None:
            snapshot = ref.get(transaction=transaction)
            if not snapshot.exists:
                return None
            before = snapshot.to_dict() or {}
            job = job_from_doc(before)
            result = change(job)
            after = job_to_doc(job)
            if after != job_to_doc(job_from_doc(before)):
                transaction.set(ref, after)
            return job, result

        outcome: tuple[Job, T] | None = run(self._client.transaction(max_attempts=20))
        return outcome

    def unmoved(self, statuses: Sequence[JobStatus], before: dt.datetime, limit: int,
                cursor: object | None = None) -> tuple[list[Job], object | None]:
        # An `in` filter on status with a range and order on updated_at: production
        # Firestore serves it only from the composite index (status, updated_at) in
        # terraform/firestore.tf; the emulator needs none (tests/infra pins it).
        status, updated = UNMOVED_QUERY_FIELDS
        query = (self._jobs.where(filter=FieldFilter(status, "in", [s.value for s in statuses]))
                 .where(filter=FieldFilter(updated, "<", before))
                 .order_by(updated).limit(limit))
        if isinstance(cursor, firestore.DocumentSnapshot):
            query = query.start_after(cursor)
        snapshots = list(query.stream())
        jobs = [job_from_doc(s.to_dict() or {}) for s in snapshots]
        return jobs, (snapshots[-1] if len(snapshots) == limit else None)

    def owned(self, owner: str, limit: int, after: str | None = None,
              newest_first: bool = True) -> tuple[list[Job], bool]:
        # An equality filter on owner with an order on created_at: production Firestore
        # serves it only from a composite index, one per direction (terraform/firestore.tf;
        # the emulator needs none, tests/infra pins them).
        owner_field, created = OWNED_QUERY_FIELDS
        direction = firestore.Query.DESCENDING if newest_first else firestore.Query.ASCENDING
        query = (self._jobs.where(filter=FieldFilter(owner_field, "==", owner))
                 .order_by(created, direction=direction).limit(limit + 1))
        if after is not None:
            cursor = self._jobs.document(after).get()
            if not cursor.exists:
                return [], False
            query = query.start_after(cursor)
        jobs = [job_from_doc(s.to_dict() or {}) for s in query.stream()]
        return jobs[:limit], len(jobs) > limit
