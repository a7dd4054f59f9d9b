"""/v1/videos through the official `openai` SDK (pinned in the dev extras) against the
local stack: what LiteLLM's proxy and the SDK's users call. Create, poll with the SDK's
own helper, download and decode the MP4, list with the SDK's cursor pagination,
delete; and the SDK's exception class for each error status."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator

import httpx
import openai
import pytest

from aiprod.adapters.media import probe_video
from tests.conftest import LocalStack

pytestmark = [pytest.mark.emulator,
              # The SDK marks its videos methods deprecated (OpenAI's Sora shutdown);
              # the wire format stays what LiteLLM and other servers speak.
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def sdk(stack: LocalStack, key: str | None = None, **options: object) -> openai.OpenAI:
    return openai.OpenAI(api_key=key or stack.api_key, base_url=f"{stack.api}/v1",
                         max_retries=0, timeout=60, **options)  # type: ignore[arg-type]


@pytest.fixture
def client(local: LocalStack) -> Iterator[openai.OpenAI]:
    local.reset_budget()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield sdk(local)


def test_create_and_poll_download_and_decode_the_mp4(local: LocalStack,
                                                     client: openai.OpenAI) -> None:
    prompt = f"a red fox in fresh snow {uuid.uuid4().hex[:6]}"
    video = client.videos.create_and_poll(
        prompt=prompt, model="aiprod/cheapest", seconds="4", size="720x1280",
        poll_interval_ms=200, extra_body={"min_quality": 0.5, "metadata": {"via": "openai"}})

    assert video.status == "completed", video
    assert video.progress == 100
    assert video.seconds == "4"
    assert video.completed_at is not None
    assert video.completed_at >= video.created_at
    content = client.videos.download_content(video.id)
    info = probe_video(content.content)
    assert info.codec == "h264"
    assert info.frames > 0
    assert info.height > info.width  # 9:16, as size asked
    assert video.size == f"{info.width}x{info.height}"
    # The same job through AIPROD's own API, with the extra_body fields.
    job = local.job(video.id)
    assert job["status"] == "SUCCEEDED"
    assert job["request"]["aspect_ratio"] == "9:16"
    assert job["request"]["min_quality"] == 0.5
    assert job["metadata"] == {"via": "openai"}
    assert video.model == job["attempts"][-1]["backend"]


def test_model_pins_one_backend_and_a_job_made_by_post_v1_jobs_is_a_video(
        local: LocalStack, client: openai.OpenAI) -> None:
    backend = "veo-31-fast"
    pinned = client.videos.create_and_poll(prompt="a heron takes off", model=backend,
                                           seconds="4", size="1280x720", poll_interval_ms=200)
    assert pinned.status == "completed", pinned
    assert pinned.model == backend
    job = local.job(pinned.id)
    assert job["plan"] == [backend]
    assert {a["backend"] for a in job["attempts"]} == {backend}

    made = local.submit(prompt="an otter floats", duration_seconds=4)
    done = client.videos.poll(made["id"], poll_interval_ms=200)
    assert done.id == made["id"]
    assert done.status == "completed"
    assert probe_video(client.videos.download_content(done.id).content).frames > 0


def test_list_pages_through_a_callers_videos_and_delete_cancels_and_hides_them(
        local: LocalStack) -> None:
    key = local.new_key(f"lister-{uuid.uuid4().hex[:6]}", rate_limit_rpm=1_000_000)
    client = sdk(local, key)
    local.fault("replicate", "ok", latency_s=600)  # renders stay running until cancelled
    local.fault("runway", "ok", latency_s=600)
    local.fault("veo", "ok", latency_s=600)
    made = []
    for n in range(5):
        if n % 2:
            reply = httpx.post(f"{local.api}/v1/jobs", json={"prompt": f"fox {n}"},
                               headers={"Authorization": f"Bearer {key}"}, timeout=30)
            assert reply.status_code == 201, reply.text
            made.append(reply.json()["id"])
        else:
            made.append(client.videos.create(prompt=f"fox {n}").id)

    first = client.videos.list(limit=2)
    assert [v.id for v in first.data] == made[::-1][:2]
    assert first.has_more is True
    every = [v.id for v in client.videos.list(limit=2)]  # the SDK follows after=last_id
    assert every == made[::-1]
    assert [v.id for v in client.videos.list(order="asc", limit=100)] == made
    assert made[0] not in [v.id for v in sdk(local).videos.list(limit=100)]  # not the tests'

    for video_id in made:
        deleted = client.videos.delete(video_id)
        assert (deleted.id, deleted.object, deleted.deleted) == (video_id, "video.deleted", True)
        with pytest.raises(openai.NotFoundError):
            client.videos.retrieve(video_id)
        # Cancelled, so nothing more is spent; the job stays, as the billing record.
        assert local.job(video_id, key)["status"] == "CANCELLED"
    assert list(client.videos.list()) == []
    local.reset_sims()


def test_errors_raise_the_sdks_exception_for_each_status(local: LocalStack,
                                                         client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.videos.create(prompt="a fox", size="800x600")
    assert bad.value.param == "size"
    assert bad.value.code == "invalid-request"
    with pytest.raises(openai.BadRequestError) as unknown_model:
        client.videos.create(prompt="a fox", model="sora-2")
    assert unknown_model.value.param == "model"

    with pytest.raises(openai.AuthenticationError):
        sdk(local, "aiprod_000000000000_not-a-key").videos.list()

    with pytest.raises(openai.NotFoundError) as missing:
        client.videos.retrieve("job_" + "0" * 32)
    assert missing.value.code == "job-not-found"
    other = local.new_key(f"other-{uuid.uuid4().hex[:6]}")
    mine = client.videos.create(prompt="mine alone", seconds="4")
    with pytest.raises(openai.NotFoundError):
        sdk(local, other).videos.retrieve(mine.id)

    with pytest.raises(openai.UnprocessableEntityError) as unfit:
        client.videos.create(prompt="a fox", seconds="60")
    assert unfit.value.param == "seconds"

    limited = sdk(local, local.new_key(f"slow-{uuid.uuid4().hex[:6]}", rate_limit_rpm=1))
    limited.videos.list()
    with pytest.raises(openai.RateLimitError) as limit:
        limited.videos.list()
    assert limit.value.code == "rate-limited"
    assert int(limit.value.response.headers["Retry-After"]) >= 1
    local.wait(mine.id)
