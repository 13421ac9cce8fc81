"""SPEC §2's limits on what a request may carry: the one table of them.

The defaults ARE the SPEC ceilings. A deployment may lower any of them (RuntimeConfig),
never raise one: building a `Limits` above a ceiling raises ValueError. The gate judges
payloads against the `Limits` in `Settings`, and the codecs cap envelopes at
`SPEC_LIMITS.max_envelope_bytes`.

`CardLimits` beside it bounds what one greet may make the runtime hold.
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


@dataclass(frozen=True)
class CardLimits:
    """What one peer card may carry: a greet whose card breaks one is refused
    (`invalid_request`, audited) and holds nothing. Not SPEC limits but the runtime's own
    (a card is held until its peer leaves or expires), so any positive value may be set;
    the defaults fit every real AGH card with room to spare."""

    max_capabilities: int = 64
    """Capability names on one card."""
    max_capability_chars: int = 64
    """Characters of one capability name (each must also match the SPEC §2 grammar)."""
    max_display_name_chars: int = 128
    """Characters of `display_name`."""
    max_proof_bytes: int = 4 * 1024
    """UTF-8 bytes of `proof` (an Ed25519 signature in base64url is 86)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 1:
                raise ValueError(f"{f.name} must be at least 1, got {getattr(self, f.name)}")


CARD_LIMITS = CardLimits()
"""The defaults."""
