"""`task-ingress serve` configuration: CLI flags over env vars (TASK_INGRESS_*) over defaults."""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from task_ingress.actors.rules import gate
from task_ingress.runtime.nats.limits import HandlerLimits


class ServeSettings(BaseSettings):
    """Everything the daemon needs; env names are TASK_INGRESS_<FIELD> (e.g. _NATS_URL)."""

    model_config = SettingsConfigDict(env_prefix="TASK_INGRESS_", extra="ignore",
                                      validate_default=True)

    nats_url: str | None = Field(default=None, description=(
        "NATS server to use; none: start a local nats-server on a free loopback port."))
    nats_token: SecretStr | None = Field(default=None, description=(
        "Token for --nats-url (user:password may also sit in the URL)."))
    nats_auth: Literal["nkey", "token"] = Field(default="nkey", description=(
        "The local server's authorization: nkey = one NATS user per enrolled peer (its "
        "key), isolated from each other; token = one shared token, peers are not isolated "
        "from each other. Not used with --nats-url (that server's operator decides)."))
    nats_connect_timeout: float = Field(default=10.0, gt=0, description=(
        "Seconds to connect to NATS at start before giving up (exit 2)."))
    trust_poll_interval: float = Field(default=0.5, gt=0, description=(
        "Seconds between checks of the trust file for NATS users to add or remove (local "
        "server, nkey mode)."))
    store: str = Field(default="task-ingress.db", description="SQLite store path.")
    workspace: str = Field(default="default", description="Workspace served.")
    channels: Annotated[list[str], NoDecode] = Field(default_factory=list, description=(
        "Channels served (comma-separated in env); empty: all, via a subject wildcard."))
    peer_id: str = Field(default="task-ingress", description=(
        "The daemon's own AGH v0 peer ID."))
    nickname: str = Field(default="task-ingress", description=(
        "Nickname of the daemon's verified handle (nickname@fingerprint) on v1."))
    key_file: str | None = Field(default=None, description=(
        "The daemon's Ed25519 key (created 0600 if missing); default <store>.peer.key."))
    trust_file: str | None = Field(default=None, description=(
        "Trust policy: handles allowed task.write; default <store>.trust.json."))
    metrics_port: int = Field(default=0, ge=0, le=65535, description=(
        "Loopback port for /metrics and /ready; 0: off."))
    ready_file: str | None = Field(default=None, description="Ready file written once serving.")
    greet_interval: float = Field(default=30.0, gt=0, description="Seconds; expiry at 2x.")
    actor_base: str = Field(default="simpleSystemBase", description="Thespian system base.")
    process_mode: Literal["inprocess", "pipeline"] = Field(default="inprocess", description=(
        "Where the runtime's actors run: inprocess (a thread of the daemon) or pipeline "
        "(a process of their own, so the daemon's NATS and signature work and the actors "
        "can use two cores; simpleSystemBase only)."))
    drain_timeout: float = Field(default=10.0, gt=0, description=(
        "Seconds to answer in-flight requests after SIGTERM/SIGINT."))
    # The daemon faces network peers, so its per-peer limits are tighter than the embedded
    # runtime's defaults (which only stop floods): beyond them a peer gets `overloaded`.
    peer_rate: float = Field(default=500.0, ge=0, description=(
        "Per-peer requests/second (token bucket refill); 0: no rate limit."))
    peer_burst: float = Field(default=1000.0, gt=0, description="Per-peer token bucket size.")
    max_in_flight_per_peer: int = Field(default=16, ge=1, description=(
        "Requests of one peer in one channel admitted and not yet answered."))
    # Against hostile traffic before the runtime (issue 13; runtime/nats/limits.py).
    unproven_rate: float = Field(default=200.0, ge=0, description=(
        "Unproven messages (no verified identity, or a key the trust policy does not "
        "allow) per second that get any work; beyond it they are dropped and counted."))
    unproven_burst: float = Field(default=1000.0, ge=1, description=(
        "Unproven messages the budget holds at most."))
    drop_report_interval: float = Field(default=10.0, gt=0, description=(
        "Seconds between the aggregated audit records of dropped messages."))
    max_in_flight_messages: int = Field(default=256, ge=1, description=(
        "Messages judged at once; beyond it NATS's pending limits push back."))
    replay_capacity: int = Field(default=100_000, ge=1, description=(
        "Judged request IDs remembered for their ts window; beyond it new ids are "
        "refused `overloaded`."))
    replay_per_peer: int = Field(default=10_000, ge=1, description=(
        "... of one peer in one channel."))
    greet_capacity: int = Field(default=100_000, ge=1, description=(
        "Peers whose last applied greet is remembered; beyond it new peers' greets are "
        "refused until marks expire."))
    greet_file: str | None = Field(default=None, description=(
        "Last applied verified greet of each peer, kept across restarts; default "
        "<store>.greets."))

    @field_validator("channels", mode="before")
    @classmethod
    def _split_channels(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _check_names(self) -> ServeSettings:
        if not gate.is_workspace(self.workspace):
            raise ValueError(f"malformed workspace {self.workspace!r}")
        for channel in self.channels:
            if not gate.is_channel(channel):
                raise ValueError(f"malformed channel {channel!r}")
        if gate.PEER_ID_RE.fullmatch(self.peer_id) is None:
            raise ValueError(f"malformed AGH v0 peer id {self.peer_id!r}")
        if re.fullmatch(r"[a-z0-9_-]{1,32}", self.nickname) is None:
            raise ValueError(f"malformed nickname {self.nickname!r}")
        if self.process_mode == "pipeline" and self.actor_base != "simpleSystemBase":
            raise ValueError("process_mode pipeline runs the actors on simpleSystemBase")
        return self

    @property
    def key_path(self) -> str:
        """The daemon's key file actually used."""
        return os.path.abspath(self.key_file or self.store + ".peer.key")

    @property
    def greet_path(self) -> str:
        """The greet ledger file actually used."""
        return os.path.abspath(self.greet_file or self.store + ".greets")

    def handler_limits(self) -> HandlerLimits:
        """The limits the envelope handler enforces."""
        return HandlerLimits(
            unproven_rate=self.unproven_rate, unproven_burst=self.unproven_burst,
            report_interval=self.drop_report_interval,
            max_in_flight=self.max_in_flight_messages, replay_capacity=self.replay_capacity,
            replay_per_peer=self.replay_per_peer, greet_capacity=self.greet_capacity,
            greet_file=self.greet_path)

    @property
    def trust_path(self) -> str:
        """The trust file actually used."""
        return os.path.abspath(self.trust_file or self.store + ".trust.json")

    def public(self) -> dict[str, Any]:
        """The settings as printed at start: secrets masked, URL passwords removed."""
        data = self.model_dump()
        data["nats_token"] = "***" if self.nats_token else None
        data["nats_url"] = mask_url(self.nats_url) if self.nats_url else None
        data["trust_file"] = self.trust_path
        return data


_PASSWORD_PARAM = re.compile(r"(?i)\b(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s]*)")
"""A password given as a parameter: `?password=…` in a URL, `password=…` or `password='…'`
in a libpq key=value connection string."""


def mask_url(url: str) -> str:
    """`url` (or a libpq key=value connection string) with any password replaced by ***,
    wherever it is given: in the user info or as a `password` parameter."""
    url = _PASSWORD_PARAM.sub(r"\1***", url)
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    netloc = f"{user}:***@{host}" if parts.password is not None else f"***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
