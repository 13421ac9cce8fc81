"""Per-peer NATS users on the daemon's own server (issue 13): a peer's RFC 004 key is its
NATS user, so peers neither read nor spoof each other's traffic; `trust add|remove` reloads
the server; `--nats-auth token` keeps one shared token (and its documented weakness)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nkeys
import pytest
from task_ingress.messages import CreateTask
from task_ingress.runtime.cli import app
from task_ingress.runtime.nats.authz import Served, nkey_authorization
from task_ingress.runtime.nats.client import (
    ClientError,
    DaemonAddress,
    Identity,
    PeerClient,
    connect,
)
from task_ingress.runtime.nats.identity import (
    b64url,
    fingerprint,
    generate_key,
    handle,
    raw_public_key,
)
from task_ingress.runtime.nats.nkey import (
    inbox_prefix,
    parse_public_key,
    public_key_of_nkey,
    user_nkey,
    user_seed,
)
from task_ingress.runtime.nats.policy import allow, read_keys, read_policy
from task_ingress.runtime.nats.server import NatsServer
from typer.testing import CliRunner

from tests.nats.conftest import RunningDaemon
from tests.nats.nats_support import Wire

Start = Callable[..., RunningDaemon]
WS = "default"


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def _eventually(check: Callable[[], bool], what: str, within: float = 15.0) -> None:
    """Wait (bounded) for something another thread or process does."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


def _pub(me: Identity) -> bytes:
    return raw_public_key(me.key)


def _fp(me: Identity) -> str:
    return fingerprint(_pub(me))


def _admitted(address: DaemonAddress, me: Identity) -> None:
    """Return once the server admits `me` (the client's own wait for a reload)."""
    async def go() -> None:
        nc = await connect(address, "test-admission", reconnects=0, me=me)
        await nc.close()

    asyncio.run(go())


def _as_peer(url: str, me: Identity) -> Wire:
    return Wire(url, nkeys_seed_str=user_seed(me.key), inbox_prefix=inbox_prefix(_fp(me)))


def _violations(wire: Wire, kind: str) -> list[str]:
    return [e for e in wire.errors if f"permissions violation for {kind}" in e]


# ---- the key is the NATS user --------------------------------------------------------
def test_an_rfc004_key_is_the_nkey_user_nats_signs_with() -> None:
    key = generate_key()
    seed = user_seed(key)
    pair = nkeys.from_seed(seed.encode())  # the library nats-py signs the challenge with
    assert seed.startswith("SU")
    assert pair.public_key.decode() == user_nkey(raw_public_key(key))
    assert public_key_of_nkey(user_nkey(raw_public_key(key))) == raw_public_key(key)
    assert parse_public_key(b64url(raw_public_key(key))) == raw_public_key(key)
    assert parse_public_key(user_nkey(raw_public_key(key))) == raw_public_key(key)
    nkey = user_nkey(raw_public_key(key))
    # Another last character (an nkey ending in "A" already was no corruption: 1 run in 32).
    corrupted = nkey[:-1] + ("B" if nkey.endswith("A") else "A")
    assert parse_public_key(corrupted) is None or parse_public_key(corrupted) != (
        raw_public_key(key))
    assert parse_public_key("not a key") is None


def test_the_trust_file_keeps_a_key_only_beside_the_handle_it_hashes_to(
        tmp_path: Path) -> None:
    path = str(tmp_path / "trust.json")
    alice, bob = Identity.of(generate_key(), "alice"), Identity.of(generate_key(), "bob")
    allow(path, [alice.handle], [_pub(alice)])
    allow(path, [bob.handle])  # a grant without a key: may write, is no NATS user
    assert read_keys(path) == {_fp(alice): _pub(alice)}
    assert set(read_policy(path)) == {_fp(alice), _fp(bob)}
    with pytest.raises(ValueError, match="belongs to none of the handles"):
        allow(path, [bob.handle], [_pub(alice)])
    obj = json.loads(Path(path).read_text())
    obj["keys"][_fp(bob)] = b64url(_pub(alice))  # a key filed under the wrong handle
    Path(path).write_text(json.dumps(obj))
    assert read_keys(path) == {_fp(alice): _pub(alice)}


def test_the_daemons_own_key_enrolled_as_a_peer_keeps_its_own_user_only() -> None:
    daemon_key = generate_key()
    me = handle("task-ingress", daemon_key)
    nkey = user_nkey(raw_public_key(daemon_key))
    users = nkey_authorization(Served(WS, "task-ingress", me), daemon_nkey=nkey,
                               operator_nkey=None, peers={me.split("@")[1]: nkey})["users"]
    assert [u["nkey"] for u in users] == [nkey]  # nats-server refuses a user listed twice


# ---- isolation -----------------------------------------------------------------------
def test_a_peer_neither_reads_nor_spoofs_another_peers_traffic(start_own_daemon: Start
                                                               ) -> None:
    d = start_own_daemon()
    info = d.info
    assert info.nats_auth == "nkey" and "token" not in info.credentials
    address = DaemonAddress.from_ready(info)
    eve, bob = Identity.of(generate_key(), "eve"), Identity.of(generate_key(), "bob")
    allow(info.trust_file, [eve.handle, bob.handle], [_pub(eve), _pub(bob)])
    for me in (eve, bob):
        _admitted(address, me)

    operator = Wire(info.nats_url, nkeys_seed_str=info.credentials["operator_seed"])
    watched = operator.collect(f"agh.network.v1.{WS}.>")
    answers = operator.collect("_INBOX.>")
    eve_wire = _as_peer(info.nats_url, eve)
    bob_wire = _as_peer(info.nats_url, bob)
    try:
        bob_subject = f"agh.network.v1.{WS}.*.peer.{_fp(bob)}"
        tries = [">", "agh.>", f"agh.network.v1.{WS}.>", bob_subject,
                 f"agh.network.v1.{WS}.ops.peer.{_fp(bob)}", f"agh.network.v1.{WS}.*.broadcast",
                 "_INBOX.>", f"_INBOX.{_fp(bob)}.>"]
        eve_got = {subject: eve_wire.subscribe_quietly(subject) for subject in tries}
        eve_wire.flush()
        assert len(_violations(eve_wire, "subscription")) == len(tries), eve_wire.errors

        bob_own = bob_wire.collect(bob_subject)
        client = PeerClient(bob_wire.nc, address)
        assert bob_wire._run(client.greet(bob, WS, "ops", ["task.write"]))["task_write"]
        outcome = bob_wire._run(client.request(bob, WS, "ops",
                                               CreateTask(title="bob's secret plans"), "bob-1"))
        assert outcome["accepted"] is True
        _eventually(lambda: len(bob_own) == 1, "bob's receipt on his own subject")
        # The traffic was on the wire: the operator's credential saw request and answers.
        _eventually(lambda: any(b"bob's secret plans" in m for m in watched), "operator view")
        _eventually(lambda: any(b'"for_id":"bob-1"' in m.replace(b" ", b"") for m in answers),
                    "operator sees the answer")

        eve_wire.flush()
        assert all(got == [] for got in eve_got.values()), "eve read bob's traffic"

        forged = json.dumps({"kind": "receipt", "from": d.info.daemon_handle,
                             "body": {"for_id": "bob-2", "status": "accepted"}}).encode()
        eve_wire.publish(f"agh.network.v1.{WS}.ops.peer.{_fp(bob)}", forged)
        eve_wire.publish(f"_INBOX.{_fp(bob)}.x.y", forged)
        eve_wire.publish(f"agh.network.v1.{WS}.ops.peer.{info.daemon_fingerprint}.x", forged)
        eve_wire.flush()
        assert len(_violations(eve_wire, "publish")) == 3, eve_wire.errors
        bob_wire.flush()
        assert len(bob_own) == 1
    finally:
        for wire in (eve_wire, bob_wire, operator):
            wire.close()


def test_the_operator_credential_reads_the_workspace_and_publishes_nothing(
        start_own_daemon: Start) -> None:
    d = start_own_daemon()
    operator = Wire(d.info.nats_url, nkeys_seed_str=d.info.credentials["operator_seed"])
    try:
        operator.publish(f"agh.network.v1.{WS}.ops.broadcast", b"{}")
        operator.subscribe_quietly("elsewhere.>")
        operator.flush()
        assert len(_violations(operator, "publish")) == 1
        assert len(_violations(operator, "subscription")) == 1
    finally:
        operator.close()


# ---- enrolment follows the trust file ------------------------------------------------
def test_trust_add_lets_a_new_key_connect_and_trust_remove_cuts_it_off(
        start_own_daemon: Start, tmp_path: Path) -> None:
    d = start_own_daemon()
    ready = str(d.daemon.settings.ready_file)
    key = str(tmp_path / "carol.key")
    who = _run("keygen", "--out", key, "--nickname", "carol")[1].strip().splitlines()[-1]
    common = ("request", "create", "--daemon", ready, "--key", key, "--channel", "ops")

    code, out = _run(*common, "--title", "before")
    assert code == 2 and "does not admit" in out and "trust add" in out
    assert d.daemon.server is not None and d.daemon.server.reloads == 0

    assert _run("trust", "add", "--key", key, "--daemon", ready)[0] == 0
    code, out = _run(*common, "--title", "after")  # at once: the client waits for the reload
    assert code == 0 and json.loads(out.splitlines()[-1])["accepted"] is True
    # The client may get in before the daemon's thread has read the server's reload line.
    server = d.daemon.server
    _eventually(lambda: server.reloads >= 1, "the daemon saw the server reload")

    me = Identity(*_load(key))
    live = _as_peer(d.info.nats_url, me)
    try:
        assert live.nc.is_connected
        assert _run("trust", "remove", who, "--daemon", ready)[0] == 0
        _eventually(lambda: not live.nc.is_connected, "the removed key's connection closed")
    finally:
        live.close()
    code, out = _run(*common, "--title", "again")
    assert code == 2 and "does not admit" in out


def _load(path: str) -> tuple[Any, str]:
    from task_ingress.runtime.nats.identity import load_identity

    return load_identity(path)


def test_a_peer_not_in_the_trust_file_is_refused_at_once(start_own_daemon: Start) -> None:
    d = start_own_daemon()

    async def attempt(**options: Any) -> str:
        from nats.aio.client import Client

        nc = Client()
        try:
            await nc.connect(d.info.nats_url, allow_reconnect=False, **options)
            return "connected"
        except Exception as exc:
            return str(exc)
        finally:
            await nc.close()

    for anonymous in ({}, {"token": "guess"}, {"user": "guest", "password": "guest"}):
        assert "Authorization Violation" in asyncio.run(attempt(**anonymous))  # no guest user
    stranger = Identity.of(generate_key(), "stranger")
    # "does not admit" is the answer without waiting; a key the trust file lists would be
    # retried until the timeout and then "still refuses".
    with pytest.raises(ClientError, match="does not admit"):
        _admitted(DaemonAddress.from_ready(d.info), stranger)


def test_an_answer_in_flight_while_the_server_reloads_still_arrives() -> None:
    daemon_key = generate_key()
    peer, late = Identity.of(generate_key(), "peer"), Identity.of(generate_key(), "late")
    served = Served(WS, "task-ingress", handle("task-ingress", daemon_key))

    def users(*peers: Identity) -> dict[str, Any]:
        return nkey_authorization(served, daemon_nkey=user_nkey(raw_public_key(daemon_key)),
                                  operator_nkey=None,
                                  peers={_fp(p): user_nkey(_pub(p)) for p in peers})

    with NatsServer(authorization=users(peer)) as server:
        daemon = Wire(server.url, nkeys_seed_str=user_seed(daemon_key))
        asker = _as_peer(server.url, peer)
        try:
            held: list[Any] = []

            async def hold(msg: Any) -> None:  # the daemon answers later, as under load
                held.append(msg)

            daemon._run(daemon.nc.subscribe(served.daemon_subjects()[3], cb=hold))
            daemon.flush()
            subject = f"agh.network.v1.{WS}.ops.peer.{served.daemon_handle.split('@')[1]}"
            answer = asyncio.run_coroutine_threadsafe(
                asker.nc.request(subject, b"question", timeout=20), asker.loop)
            _eventually(lambda: len(held) == 1, "the request reached the daemon")
            assert server.reload(users(peer, late))  # a trust add while it is in flight
            daemon._run(held[0].respond(b"answer"))
            assert answer.result(25).data == b"answer"
            assert daemon.errors == []
        finally:
            daemon.close()
            asker.close()


# ---- the shared token, by request ----------------------------------------------------
def test_token_mode_serves_but_every_token_holder_reads_everyone(start_own_daemon: Start,
                                                                  tmp_path: Path) -> None:
    d = start_own_daemon(nats_auth="token")
    info = d.info
    assert info.nats_auth == "token" and info.credentials["token"]
    snoop = Wire(info.nats_url, info.credentials["token"])
    try:
        seen = snoop.collect(">")
        key = str(tmp_path / "dave.key")
        _run("keygen", "--out", key, "--nickname", "dave")
        assert _run("trust", "add", "--key", key, "--trust-file", info.trust_file)[0] == 0
        code, out = _run("request", "create", "--daemon", str(d.daemon.settings.ready_file),
                         "--key", key, "--channel", "ops", "--title", "dave's plans")
        assert code == 0 and json.loads(out.splitlines()[-1])["accepted"] is True
        _eventually(lambda: any(b"dave's plans" in m for m in seen),
                    "the token holder reads another peer's request")
    finally:
        snoop.close()
