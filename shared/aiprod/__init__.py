"""AIPROD: route text- and image-to-video jobs to the provider that fits them best."""

__version__ = "0.1.0"
