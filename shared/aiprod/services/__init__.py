"""Use cases: each entry point calls one of these. They orchestrate adapters
around the pure domain, and raise only for infrastructure faults (so Pub/Sub
redelivers); provider faults are handled here by fallback."""
