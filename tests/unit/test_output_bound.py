"""A render process's memory stays bounded whatever its concurrency: at most
AIPROD_OUTPUT_CHECKS_AT_ONCE outputs downloaded and decoded at once, an inline
output (Veo's) on disk rather than in memory and not held while it waits its turn,
and no output larger than AIPROD_OUTPUT_MAX_BYTES. On in-memory fakes, with real
threads for the concurrent renders."""

from __future__ import annotations

import concurrent.futures
import contextlib
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from aiprod.adapters import media
from aiprod.adapters.providers import download_output, inline_output
from aiprod.adapters.providers.base import ProviderError, TaskState, TaskStatus
from aiprod.domain.job import ErrorClass, JobStatus
from aiprod.services import render
from aiprod.wiring.config import Settings
from tests.fakes import FakeProvider, Fakes, fake_runtime, sample_video
from tests.service_helpers import admit, deliver

ROOT = Path(__file__).parents[2]


@contextlib.contextmanager
def waiting_its_turn(fx: Fakes, job: Any, provider: Any) -> Iterator[
        concurrent.futures.Future[Any]]:
    """A render of `job` that polled its finished task and now waits for an output
    check while another output holds the only one (released by the caller)."""
    assert fx.rt.output_checks.acquire(blocking=False)  # another output is being checked
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        rendering = pool.submit(deliver, fx, job)
        for _ in range(500):
            if provider.calls_of("poll"):
                break
            time.sleep(0.01)
        time.sleep(0.1)
        yield rendering


class Gauge:
    """How many threads are inside something at once, and the most there ever were."""

    def __init__(self) -> None:
        self.inside = 0
        self.most = 0
        self._lock = threading.Lock()

    def around(self, call: Callable[..., Any], hold_s: float = 0.03) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.inside += 1
                self.most = max(self.most, self.inside)
            try:
                time.sleep(hold_s)  # long enough for the other renders to arrive
                return call(*args, **kwargs)
            finally:
                with self._lock:
                    self.inside -= 1
        return counted


def one_backend(fx: Fakes, jobs: int) -> list[Any]:
    return [admit(fx, job_id=f"job_{n}", plan=1) for n in range(jobs)]


@pytest.mark.parametrize("at_once", [1, 3])
def test_many_renders_finishing_together_check_at_most_the_bound_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at_once: int) -> None:
    fx = fake_runtime(tmp_path, output_checks_at_once=at_once, backend_busy_wait_s=30.0)
    jobs = one_backend(fx, 10)
    downloads, checks = Gauge(), Gauge()
    video = sample_video(4)
    for provider in fx.providers.values():
        provider.video = video
        monkeypatch.setattr(provider, "download", downloads.around(provider.download))
    monkeypatch.setattr(render.media, "probe_video", checks.around(media.probe_video))

    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        done = list(pool.map(lambda job: deliver(fx, job, delivery=f"d-{job.id}"), jobs))

    assert [job.status for job in done] == [JobStatus.SUCCEEDED] * len(jobs)
    assert downloads.most == at_once
    assert checks.most == at_once


class InlineProvider(FakeProvider):
    """Answers a finished poll with the video inline, as Veo does: the poll writes it
    to a file (adapters.providers.inline_output)."""

    def poll(self, task_id: str) -> TaskStatus:
        status = super().poll(task_id)
        if status.state is not TaskState.SUCCEEDED:
            return status
        return TaskStatus(TaskState.SUCCEEDED, 1.0,
                          output_file=inline_output(self.video or sample_video(4)))

    max_bytes = 256 * 2**20

    def download(self, status: TaskStatus, dest: Path) -> None:
        self.calls.append(("download", "inline"))
        download_output(status, dest, 10.0, self.max_bytes)


def inline_files() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("aiprod-inline-*.mp4"))


def test_an_inline_output_is_not_held_while_it_waits_its_turn(tmp_path: Path) -> None:
    fx = fake_runtime(tmp_path, output_checks_at_once=1)
    job = admit(fx, plan=1)
    backend = job.plan[0]
    provider = InlineProvider(backend, video=sample_video(4))
    fx.rt._providers[backend] = provider
    before = inline_files()
    with waiting_its_turn(fx, job, provider) as rendering:
        assert inline_files() == before  # polled, finished, written, and dropped
        assert not rendering.done()      # waiting its turn
        fx.rt.output_checks.release()
        done = rendering.result(timeout=30)
    assert done.status is JobStatus.SUCCEEDED
    assert len(provider.calls_of("poll")) == 2  # once more, under the bound
    assert provider.calls_of("create") == [job.id]
    assert inline_files() == before


def test_an_inline_output_with_its_turn_free_is_used_at_once_and_removed(
        fx: Fakes) -> None:
    job = admit(fx, plan=1)
    provider = InlineProvider(job.plan[0], video=sample_video(4))
    fx.rt._providers[job.plan[0]] = provider
    before = inline_files()
    assert deliver(fx, job).status is JobStatus.SUCCEEDED
    assert len(provider.calls_of("poll")) == 1
    assert inline_files() == before


def test_an_output_over_the_cap_fails_its_attempt_as_too_large(tmp_path: Path) -> None:
    fx = fake_runtime(tmp_path, output_max_bytes=2**20)
    job = admit(fx, plan=1)
    provider = InlineProvider(job.plan[0], video=sample_video(4) + b"\0" * 2**20)
    provider.max_bytes = fx.rt.settings.output_max_bytes  # as the real clients are given
    fx.rt._providers[job.plan[0]] = provider
    before = inline_files()
    after = deliver(fx, job)
    attempt = after.attempts[0]
    assert attempt.error is not None
    assert (attempt.error.error_class, attempt.error.code) == (ErrorClass.OUTPUT_CHECK,
                                                               "output_too_large")
    assert after.status is JobStatus.FAILED
    assert inline_files() == before


def test_an_inline_file_over_the_cap_is_refused_before_it_is_moved(tmp_path: Path) -> None:
    status = TaskStatus(TaskState.SUCCEEDED, output_file=inline_output(b"x" * 2048))
    with pytest.raises(ProviderError) as refused:
        download_output(status, tmp_path / "out.mp4", 10.0, max_bytes=1024)
    assert (refused.value.error_class, refused.value.code) == (ErrorClass.BACKEND,
                                                               "output_too_large")
    assert not (tmp_path / "out.mp4").exists()
    assert status.output_file is not None
    status.output_file.unlink()


# bench/capacity.py, "Renders in flight" (README, Performance): a render process's
# peak resident memory with 187 renders in flight, two runs.
MEASURED_RENDER_PEAK_MIB = 319


def test_the_outputs_held_at_once_fit_the_render_instance() -> None:
    """Each output checked at once sits whole in /tmp, which on Cloud Functions (2nd
    gen, on Cloud Run) is "the built-in in-memory filesystem ... which does not limit
    the memory consumed by in-memory file writes"
    (https://cloud.google.com/run/docs/configuring/in-memory-volumes): so
    output_checks_at_once outputs of output_max_bytes, beside the process's measured
    peak, must fit the render instance functions.yaml gives."""
    kinds = yaml.safe_load((ROOT / "functions.yaml").read_text())["kinds"]
    memory = kinds["render"]["memory"]
    assert memory.endswith("Gi")
    defaults = Settings.model_fields
    held = (defaults["output_checks_at_once"].default
            * defaults["output_max_bytes"].default)
    assert MEASURED_RENDER_PEAK_MIB * 2**20 + held <= int(memory[:-2]) * 2**30


def test_an_output_waiting_its_turn_for_a_job_cancelled_meanwhile_is_never_fetched(
        tmp_path: Path) -> None:
    from aiprod.services.cancel import cancel_job

    fx = fake_runtime(tmp_path, output_checks_at_once=1)
    job = admit(fx, plan=1)
    provider = fx.provider(job.plan[0])
    with waiting_its_turn(fx, job, provider) as rendering:
        cancel_job(fx.rt, job.id)
        fx.rt.output_checks.release()
        done = rendering.result(timeout=30)
    assert done.status is JobStatus.CANCELLED
    assert provider.calls_of("download") == []


def test_stopping_a_task_that_finished_with_an_inline_output_leaves_no_file(
        tmp_path: Path) -> None:
    """A cancel that finds the task done (its poll wrote the video to a file) keeps
    nothing: /tmp is the render instance's memory."""
    from aiprod.services.cancel import cancel_job, stop_task
    from aiprod.services.messages import RenderMessage

    fx = fake_runtime(tmp_path)
    job = admit(fx, plan=1)
    provider = InlineProvider(job.plan[0], video=sample_video(4))
    fx.rt._providers[job.plan[0]] = provider
    provider.creates = ["task-1"]
    provider.polls["task-1"] = [TaskStatus(TaskState.RUNNING, 0.5)]
    assert deliver(fx, job).status is JobStatus.RENDERING
    assert cancel_job(fx.rt, job.id) is not None
    provider.polls["task-1"] = [TaskStatus(TaskState.SUCCEEDED, 1.0)]  # done meanwhile
    before = inline_files()
    stop_task(fx.rt, RenderMessage(job_id=job.id, backend=job.plan[0], attempt=0,
                                   action="cancel"))
    assert provider.calls_of("poll")[-1] == "task-1"
    assert inline_files() == before
