"""How a key's per-minute request limit is spread over shard counters.

Firestore sustains about one write per second on one document
(https://cloud.google.com/firestore/docs/solutions/counters: "you can't update a
single document at an unlimited rate", a counter with 10 shards "can handle 10x as
many writes"; the Firebase distributed-counter extension names "a limit of one
sustained write per second, per document"). One counter per key and minute at the
default 600 requests a minute would take 10 writes a second.

So the minute's limit is split into shards, each with its own counter and its own
quota (the quotas add up to the limit). A request takes a slot in one shard: it is
admitted if that shard's count, including it, is within the shard's quota. The
cap is exact (margin 0): a shard admits exactly the requests whose count is at most
its quota, so the key never gets more than `limit` a minute. And a request is
refused only once every shard has given out its whole quota, so a key under its
limit is never refused.
"""

from __future__ import annotations

import math

# Writes a shard counter may take in a minute at the key's full rate: one a second.
WRITES_PER_SHARD_PER_MINUTE = 60
# Past 64 shards (3,840 requests a minute) shards take more than one write a second;
# a refusal may cost one write per shard, so their number stays bounded.
MAX_SHARDS = 64


def shard_quotas(limit: int) -> list[int]:
    """Each shard's share of `limit` requests a minute; they add up to `limit`."""
    shards = max(1, min(MAX_SHARDS, math.ceil(limit / WRITES_PER_SHARD_PER_MINUTE)))
    base, extra = divmod(limit, shards)
    return [base + (1 if shard < extra else 0) for shard in range(shards)]
