"""Never pay twice for the same video (`"reuse": "cached"`, opt-in per request).

A request identical to one that SUCCEEDED within the cache TTL, in the same scope,
ends SUCCEEDED at once with the same stored output and cost 0 (`reused_from`
names the original): no provider call, no reservation. A request identical to one
still rendering joins it and ends with it, charged nothing. One job per key leads
(aiprod.adapters.reuse elects it with a create, so racing identical requests
render once); the leader's end, whatever ends it, settles its followers
(`leader_ended`, called where every job's end is announced), and the watchdog
settles any follower whose leader's end was missed.
"""

from __future__ import annotations

import datetime as dt
import logging

from aiprod.adapters.reuse import Entry, EntryState
from aiprod.domain import reuse as policy
from aiprod.domain.events import EventType
from aiprod.domain.job import Job, JobRequest, JobStatus
from aiprod.domain.job import upload_sha256 as job_upload_sha256
from aiprod.observability import metrics
from aiprod.observability.logs import log
from aiprod.wiring.runtime import Runtime

logger = logging.getLogger(__name__)

DEPLOYMENT = "deployment"
# An elected leader is stored right after its election, but a loaded Firestore may take
# seconds: a joiner waits this long for it before rendering on its own (measured on a
# loaded 2-core machine: past 1 s).
LEADER_WAIT_TRIES = 100
LEADER_WAIT_S = 0.1


def ttl(rt: Runtime) -> dt.timedelta:
    return dt.timedelta(seconds=rt.settings.cache_ttl_s)


def upload_sha256(image_url: str | None) -> str | None:
    """The content hash of an image uploaded as a data: URI (what admission stages)."""
    return job_upload_sha256(image_url)


def key_for(rt: Runtime, request: JobRequest, owner: str) -> str:
    """The request's key in its scope: the caller's API key, or the whole deployment
    when the operator widened it (AIPROD_CACHE_SCOPE=deployment)."""
    scope = DEPLOYMENT if rt.settings.cache_scope == DEPLOYMENT else owner
    return policy.request_key(request, upload_sha256(request.image_url), scope)


def before_money(rt: Runtime, job: Job) -> tuple[Job, bool] | None:
    """Serve `job` (not stored yet) from an identical request before any money is
    held: a finished one's output, or a place behind one still rendering. The job
    as stored and whether this call stored it, or None when it must render (or lead)."""
    assert job.reuse_key is not None
    entry = rt.reuse.get(job.reuse_key)
    if entry is None or not entry.live(rt.clock()):
        return None
    return _reuse(rt, job, entry)


def after_money(rt: Runtime, job: Job) -> tuple[Job, bool] | None:
    """With its first attempt funded, make `job` lead its key, unless an identical job
    got there first: then it is served by that one (the caller releases the hold).
    None when it leads (or renders on its own: the leader does not meet its floor or
    ceiling)."""
    assert job.reuse_key is not None
    now = rt.clock()
    entry = rt.reuse.lead(job.reuse_key, job.id, now, now + ttl(rt))
    if entry.leader != job.id and entry.state is EntryState.RENDERING:
        leader = rt.store.get(entry.leader)
        if leader is not None and leader.status.terminal:
            # Its end was never recorded (the process died after ending it): record it
            # now, so the key is not stuck behind a job that will never render.
            leader_ended(rt, leader)
            entry = rt.reuse.lead(job.reuse_key, job.id, now, now + ttl(rt))
    if entry.leader == job.id:
        return None
    return _reuse(rt, job, entry)


def _reuse(rt: Runtime, job: Job, entry: Entry) -> tuple[Job, bool] | None:
    now = rt.clock()
    original = rt.store.get(entry.leader)
    for _ in range(LEADER_WAIT_TRIES):
        if original is not None or entry.state is not EntryState.RENDERING:
            break
        rt.sleep(LEADER_WAIT_S)  # elected a moment ago, not stored yet
        original = rt.store.get(entry.leader)
    if original is None:
        return None
    if entry.state is EntryState.SUCCEEDED or original.status.terminal:
        if not policy.reusable(original, job.request, rt.catalog.backends, now, ttl(rt)):
            return None
        policy.serve_from(job, original, now)
        if not rt.store.create(job):
            return _stored(rt, job.id)  # a retried admission stored it first
        _served(rt, job, original, "served")
        return job, True
    if not policy.joinable(original, job.request, rt.catalog.backends):
        return None
    job.reused_from = original.id
    job.plan = list(original.plan)
    job.estimated_cost_usd = 0.0
    job.status_reason = f"joined job {original.id}, an identical request still rendering"
    if not rt.store.create(job):
        return _stored(rt, job.id)
    rt.reuse.follow(job.reuse_key or "", job.id, now + ttl(rt))
    log(logger, logging.INFO, "job joined an identical job in flight", job_id=job.id,
        reused_from=original.id)
    _emit(rt, job, EventType.QUEUED)
    # The leader may have ended before we were listed as its follower: look again.
    settle_follower(rt, job)
    return _stored(rt, job.id)[0], True


def _stored(rt: Runtime, job_id: str) -> tuple[Job, bool]:
    stored = rt.store.get(job_id)
    assert stored is not None
    return stored, False


def leader_ended(rt: Runtime, job: Job) -> None:
    """A job that led its key ended: record it (a success serves later requests for the
    TTL; a failure lets the next request lead anew) and end its followers with it.
    Idempotent, so it may run on every announcement of the end."""
    if job.reuse_key is None or job.reused_from is not None or not job.status.terminal:
        return
    now = rt.clock()
    succeeded = job.status is JobStatus.SUCCEEDED
    rt.reuse.finish(job.reuse_key, job.id,
                    EntryState.SUCCEEDED if succeeded else EntryState.FAILED,
                    now + ttl(rt) if succeeded else now)
    for follower_id in rt.reuse.followers(job.reuse_key):
        follower = rt.store.get(follower_id)
        if follower is not None and follower.reused_from == job.id:
            _end_follower(rt, follower, job)


def settle_follower(rt: Runtime, follower: Job) -> bool:
    """End a job that joined another if that one has ended (or never existed). For the
    watchdog, and for a join that may have come after the leader's end."""
    if follower.reused_from is None or follower.status.terminal:
        return False
    leader = rt.store.get(follower.reused_from)
    if leader is None:
        if rt.clock() - follower.created_at < dt.timedelta(
                seconds=rt.settings.watchdog_stale_s):
            return False
        done = rt.store.mutate(follower.id, lambda j: policy.orphaned(j, rt.clock()))
        if done is not None and done[1]:
            _emit(rt, done[0], EventType.FAILED)
        return done is not None and done[1]
    if not leader.status.terminal:
        return False
    return _end_follower(rt, follower, leader)


def _end_follower(rt: Runtime, follower: Job, leader: Job) -> bool:
    done = rt.store.mutate(follower.id, lambda j: policy.end_with(j, leader, rt.clock()))
    if done is None or not done[1]:
        return False
    ended = done[0]
    if ended.status is JobStatus.SUCCEEDED:
        _served(rt, ended, leader, "joined")
    else:
        log(logger, logging.INFO, "job ended with the identical job it joined",
            job_id=ended.id, reused_from=leader.id, status=ended.status.value)
        _emit(rt, ended, EventType.FAILED)
    return True


def _served(rt: Runtime, job: Job, original: Job, kind: str) -> None:
    """Announce a job served from another's output, and count what it saved."""
    log(logger, logging.INFO, f"job {kind} from an identical request at no cost",
        job_id=job.id, reused_from=original.id, saved_usd=original.cost_usd)
    metrics.count("cache_hits", job_id=job.id, kind=kind)
    metrics.observe("cache_saved_usd", original.cost_usd, job_id=job.id, kind=kind)
    _emit(rt, job, EventType.SUCCEEDED)


def _emit(rt: Runtime, job: Job, event_type: EventType) -> None:
    from aiprod.services.publishing import emit  # publishing calls leader_ended

    emit(rt, job, event_type)
