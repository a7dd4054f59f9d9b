"""What a render costs, from the catalog's per-second prices."""

from __future__ import annotations

from aiprod.domain.catalog import DEFAULT_RESOLUTION, Backend, Resolution


def price_per_second(backend: Backend, audio: bool,
                     resolution: Resolution = DEFAULT_RESOLUTION) -> float:
    """The rate at `resolution` where the provider prices by it (catalog
    `price.by_resolution`), else the base rate; with audio where that costs more."""
    rate = backend.price.rate(resolution)
    if audio and rate.usd_per_second_with_audio is not None:
        return rate.usd_per_second_with_audio
    return rate.usd_per_second


def estimate_usd(backend: Backend, duration_seconds: float, audio: bool,
                 resolution: Resolution = DEFAULT_RESOLUTION) -> float:
    """Providers bill per second of requested output; round to a micro-dollar."""
    return round(price_per_second(backend, audio, resolution) * duration_seconds, 6)
