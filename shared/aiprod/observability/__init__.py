"""Observability: structured logs, metric points (declared in monitoring.yaml), traces.

Imported by every other layer, so it imports only the domain and the package root."""
