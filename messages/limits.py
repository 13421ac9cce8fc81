"""SPEC §2's limits on what a request may carry: the one table of them.

The defaults ARE the SPEC ceilings. A deployment may lower any of them (RuntimeConfig),
never raise one: building a `Limits` above a ceiling raises ValueError. The gate judges
payloads against the `Limits` in `Settings`, and the codecs cap envelopes at
`SPEC_LIMITS.max_envelope_bytes`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Limits:
    """Payload and envelope limits (SPEC §2); sizes in UTF-8 bytes, titles in characters."""

    max_title_chars: int = 256
    max_description_bytes: int = 16 * 1024
    max_metadata_entries: int = 32
    max_metadata_bytes: int = 8 * 1024
    max_envelope_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        for f in fields(self):
            value, ceiling = getattr(self, f.name), f.default
            if not 0 < value <= ceiling:
                raise ValueError(f"{f.name} must be in 1..{ceiling}, got {value}")


SPEC_LIMITS = Limits()
"""The ceilings themselves."""
