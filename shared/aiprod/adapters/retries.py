"""How a single Firestore commit (not a transaction) is retried."""

from __future__ import annotations

from google.api_core import exceptions as gexc
from google.api_core import retry

# The client's default retry for Commit (UNAVAILABLE, RESOURCE_EXHAUSTED), plus
# ABORTED: a commit aborted by contention ("Transaction lock timeout" when several
# writers hit one document at once) was not applied, so trying again cannot write
# twice: a `create` retried after a racing create won answers AlreadyExists (the Node
# client retries commits on ABORTED too:
# https://github.com/googleapis/nodejs-firestore/pull/1242).
COMMIT_RETRY = retry.Retry(
    predicate=retry.if_exception_type(gexc.Aborted, gexc.ServiceUnavailable,
                                      gexc.ResourceExhausted),
    initial=0.05, maximum=1.0, multiplier=2.0, timeout=10.0)
