"""How a key's minute is spread over shard counters (domain.ratelimit)."""

from __future__ import annotations

import pytest

from aiprod.domain.ratelimit import MAX_SHARDS, WRITES_PER_SHARD_PER_MINUTE, shard_quotas


@pytest.mark.parametrize("limit", [1, 3, 59, 60, 61, 130, 600, 601, 3840, 10_000, 1_000_000])
def test_the_quotas_add_up_to_the_limit_and_no_shard_runs_hot(limit: int) -> None:
    quotas = shard_quotas(limit)
    assert sum(quotas) == limit  # the cap is exact: margin 0
    assert max(quotas) - min(quotas) <= 1  # an even spread
    assert len(quotas) <= MAX_SHARDS
    if limit <= MAX_SHARDS * WRITES_PER_SHARD_PER_MINUTE:
        # about one write a second per document at the key's full rate
        assert max(quotas) <= WRITES_PER_SHARD_PER_MINUTE


def test_the_default_600_a_minute_takes_ten_shards() -> None:
    assert shard_quotas(600) == [60] * 10
    assert shard_quotas(3) == [3]  # small limits keep one document
