"""The `aiprod` command (click + rich): the local stack, keys, budget, SLO report."""
