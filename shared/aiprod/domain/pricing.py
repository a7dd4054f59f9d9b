"""What a render costs, from the catalog's per-second prices."""

from __future__ import annotations

from aiprod.domain.catalog import Backend


def price_per_second(backend: Backend, audio: bool) -> float:
    price = backend.price
    if audio and price.usd_per_second_with_audio is not None:
        return price.usd_per_second_with_audio
    return price.usd_per_second


def estimate_usd(backend: Backend, duration_seconds: float, audio: bool) -> float:
    """Providers bill per second of requested output; round to a micro-dollar."""
    return round(price_per_second(backend, audio) * duration_seconds, 6)
