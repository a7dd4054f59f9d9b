"""AIPROD: route text- and image-to-video jobs to the provider that fits them best."""

from pathlib import Path

__version__ = "0.1.0"

REPO_ROOT = Path(__file__).resolve().parents[2]


def root_file(name: str) -> Path:
    """A file kept at the repository root (backends.yaml, monitoring.yaml), or beside
    the package in a deployed function's source archive (main.py, those files and
    aiprod/ side by side)."""
    package_parent = Path(__file__).resolve().parents[1]
    for candidate in (REPO_ROOT / name, package_parent / name):
        if candidate.exists():
            return candidate
    return REPO_ROOT / name
