"""Wiring: settings from the environment and the files beside the code, and the Runtime
that builds each adapter once per process and hands it to the services."""
