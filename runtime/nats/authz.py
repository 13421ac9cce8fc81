"""Who may publish and subscribe where: the nats-server `authorization` block (pure).

With per-peer users (`--nats-auth nkey`, the default of the local server) every enrolled
peer connects as its own nkey user (its RFC 004 key, nkey.py) and may

- publish only to the broadcast subjects of the served workspace (greets, whois) and the
  daemon's own peer subjects there (task says), v0 and v1 forms;
- subscribe only to its own v1 peer subject (receipts, whois answers addressed to it) and
  its own inbox prefix `_INBOX.<fingerprint>.>` (answers to its NATS requests).

So no peer reads another's requests or answers (a subscription to `>` or to someone else's
subject is refused by the server), and none publishes onto another peer's subject. The
daemon has its own user (its key): it subscribes to what it serves, publishes in its
workspace and answers requests on their reply subjects under `_INBOX.`. Not through
`allow_responses`: nats-server forgets those per-request grants whenever it reloads its
configuration, so every answer in flight during a `trust add` would be refused (measured,
tests/nats/test_nats_auth.py); and `allow_responses` would let a requester name any subject
at all as its reply subject, where `_INBOX.>` keeps the daemon's answers in inboxes and its
own workspace.
The operator user (a key made per run, its seed in the ready file) reads every subject of
the workspace and every inbox and publishes nothing: monitoring and debugging.

The block is JSON, which nats-server's configuration format accepts as is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from task_ingress.runtime.nats import envelope as wire
from task_ingress.runtime.nats.nkey import INBOX_ROOT, inbox_prefix

MAX_PAYLOAD = 1024 * 1024


@dataclass(frozen=True)
class Served:
    """What the daemon serves: its workspace and who it is (v0 peer ID, v1 handle)."""

    workspace: str
    daemon_peer_id: str
    daemon_handle: str

    def prefixes(self) -> list[str]:
        """The subject prefixes of the workspace, v0 then v1."""
        return [f"{wire.PREFIXES[p]}.{self.workspace}" for p in (wire.PROTOCOL_V0,
                                                                  wire.PROTOCOL_V1)]

    def daemon_subjects(self) -> list[str]:
        """Broadcast and the daemon's peer subjects, every channel, both protocols (the
        subjects the daemon subscribes to, daemon.py)."""
        ws, v0, v1 = self.workspace, wire.PROTOCOL_V0, wire.PROTOCOL_V1
        return [wire.broadcast_subject(ws, "*", v0), wire.broadcast_subject(ws, "*", v1),
                wire.peer_subject(ws, "*", self.daemon_peer_id, v0),
                wire.peer_subject(ws, "*", self.daemon_handle, v1)]


def peer_permissions(served: Served, fingerprint: str) -> dict[str, Any]:
    """An enrolled peer: talk to the daemon, read only what is addressed to itself."""
    own = f"{wire.PREFIX_V1}.{served.workspace}.*.peer.{fingerprint}"  # its v1 route token
    return {"publish": {"allow": served.daemon_subjects()},
            "subscribe": {"allow": [own,
                                    f"{inbox_prefix(fingerprint)}.>"]}}


def daemon_permissions(served: Served) -> dict[str, Any]:
    """The daemon: hear broadcasts and its own subjects, publish in its workspace (greets,
    receipts, whois answers) and answer requests on their inbox reply subjects."""
    return {"publish": {"allow": [*(f"{p}.>" for p in served.prefixes()), f"{INBOX_ROOT}.>"]},
            "subscribe": {"allow": served.daemon_subjects()}}


def operator_permissions(served: Served) -> dict[str, Any]:
    """The operator's credential: read everything of the workspace, publish nothing."""
    return {"publish": {"deny": [">"]},
            "subscribe": {"allow": [*(f"{p}.>" for p in served.prefixes()),
                                    f"{INBOX_ROOT}.>"]}}


def nkey_authorization(served: Served, *, daemon_nkey: str, operator_nkey: str | None,
                       peers: Mapping[str, str]) -> dict[str, Any]:
    """The `authorization` block: the daemon, the operator (if any) and one user per
    enrolled peer (`peers`: fingerprint -> public nkey), in a stable order."""
    users: list[dict[str, Any]] = [{"nkey": daemon_nkey,
                                    "permissions": daemon_permissions(served)}]
    if operator_nkey is not None:
        users.append({"nkey": operator_nkey, "permissions": operator_permissions(served)})
    taken = {u["nkey"] for u in users}
    for fp, nkey in sorted(peers.items()):
        if nkey in taken:  # the daemon's own key enrolled as a peer: it keeps its own user
            continue
        taken.add(nkey)
        users.append({"nkey": nkey, "permissions": peer_permissions(served, fp)})
    return {"users": users}


def token_authorization(token: str) -> dict[str, Any]:
    """One shared token for everyone (`--nats-auth token`): peers are not isolated."""
    return {"token": token}


def server_config(port: int, authorization: Mapping[str, Any]) -> str:
    """A whole nats-server configuration for the local server on 127.0.0.1:`port`."""
    return json.dumps({"listen": f"127.0.0.1:{port}", "max_payload": MAX_PAYLOAD,
                       "authorization": dict(authorization)}, indent=1) + "\n"
