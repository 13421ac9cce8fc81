"""`task-ingress keygen`, `trust add|remove|list` and `request create|update|cancel|enqueue`
(SPEC 9). Exit codes (runtime/cli_exit.py): 0 success, 1 the checked thing failed (a
rejected request), 2 usage error or could not connect: one line naming the problem
(`UsageProblem`), never a traceback. Heavy imports stay inside the commands.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from task_ingress.runtime.cli_exit import UsageProblem

trust_app = typer.Typer(help="The operator's trust policy: verified handles allowed "
                             "task.write (a running daemon picks changes up, no restart).",
                        no_args_is_help=True)
request_app = typer.Typer(help="Send one signed AGH task request to a daemon and print its "
                               "answer as JSON.", no_args_is_help=True)


def _fail(message: str) -> UsageProblem:
    """The user's mistake or an unreachable daemon: one line, exit 2."""
    return UsageProblem(message)


def _ready_problem(path: str, exc: Exception) -> UsageProblem:
    from task_ingress.runtime.nats.ready import DaemonNotRunning

    if isinstance(exc, DaemonNotRunning):
        return _fail(str(exc))
    if isinstance(exc, FileNotFoundError):
        return _fail(f"no ready file at {path}; start the daemon with "
                     f"`task-ingress serve --ready-file {path}`")
    return _fail(f"cannot read the ready file {path}: {exc}")


def _edit_problem(path: str, exc: OSError) -> UsageProblem:
    return _fail(f"cannot write the trust policy {path} ({exc.strerror or exc}); check the "
                 "directory's owner and mode")


# ---- keygen ------------------------------------------------------------------------
def keygen(
    out: Annotated[str, typer.Option("--out", help="Key file to write (mode 0600).")],
    nickname: Annotated[str, typer.Option(help="Nickname of the handle, [a-z0-9_-]{1,32}.")
                        ] = "peer",
) -> None:
    """Write an Ed25519 key; print the verified handle nickname@fingerprint (last line)."""
    from task_ingress.runtime.nats.identity import generate_key, handle, save_key

    key = generate_key()
    try:
        who = handle(nickname, key)
        save_key(out, key, nickname)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    except FileExistsError:
        raise _fail(f"{out} exists; refusing to overwrite a key (choose another --out)"
                    ) from None
    except OSError as exc:
        raise _fail(f"--out {out}: cannot write it ({exc.strerror})") from None
    from task_ingress.runtime.nats.identity import b64url, raw_public_key
    from task_ingress.runtime.nats.nkey import user_nkey

    pub = raw_public_key(key)
    typer.echo(f"wrote {out}; public key {b64url(pub)} (NATS user {user_nkey(pub)}): give "
               "the operator the handle below and this key for `trust add --pubkey`",
               err=True)
    typer.echo(who)


# ---- trust -------------------------------------------------------------------------
TrustFile = Annotated[str | None, typer.Option("--trust-file", help="Policy file.")]
Daemon = Annotated[str | None, typer.Option("--daemon", help="Ready file of a daemon "
                                                            "(its trust_file is used).")]


Database = Annotated[str | None, typer.Option("--database", help=(
    "A cluster's PostgreSQL URL: the policy every daemon of the cluster reads."))]


def _policy_path(trust_file: str | None, daemon: str | None,
                 database: str | None = None) -> str:
    if sum(map(bool, (trust_file, daemon, database))) != 1:
        raise _fail("give exactly one of --trust-file PATH, --daemon READY_FILE or "
                    "--database URL")
    if database:
        return ""  # the caller uses runtime/cluster/trust_cli.py instead of a file
    if trust_file:
        return trust_file
    from task_ingress.runtime.nats.ready import cluster_node, read_ready_file

    try:  # the policy can be edited while the daemon is down: no pid check here
        path = read_ready_file(str(daemon)).trust_file
    except (OSError, ValueError) as exc:
        raise _ready_problem(str(daemon), exc) from None
    node = cluster_node(str(daemon))
    if node is not None:
        # A cluster's daemons read their policy from the database and have no trust file.
        raise _fail(f"the daemon in {daemon} is cluster node {node}: a cluster's trust "
                    "policy is in its database; give --database URL instead of --daemon")
    return path


@trust_app.command("add")
def trust_add(
    handles: Annotated[list[str] | None, typer.Argument(help="nickname@fingerprint")] = None,
    pubkey: Annotated[list[str] | None, typer.Option("--pubkey", help=(
        "A handle's public key (base64url, as RFC 004 proofs carry it, or its U… nkey); "
        "repeatable. Makes the handle a NATS user of the daemon's own server."))] = None,
    key: Annotated[list[str] | None, typer.Option("--key", help=(
        "A key file from `task-ingress keygen`: its handle and public key; repeatable."))
                   ] = None,
    trust_file: TrustFile = None, daemon: Daemon = None, database: Database = None,
) -> None:
    """Allow verified handles (their keys) to be granted task.write; with their public
    keys they may also connect to the daemon's own NATS server (reloaded at once)."""
    from task_ingress.runtime.nats.identity import (
        handle_fingerprint,
        load_identity,
        raw_public_key,
    )
    from task_ingress.runtime.nats.nkey import parse_public_key
    from task_ingress.runtime.nats.policy import allow, read_keys

    path = _policy_path(trust_file, daemon, database)
    names = [h.strip() for h in handles or []]
    keys: list[bytes] = []
    for text in pubkey or []:
        raw = parse_public_key(text)
        if raw is None:
            raise _fail(f"--pubkey {text!r} is not an Ed25519 public key (base64url of 32 "
                        "bytes, or a U… nkey)")
        keys.append(raw)
    for key_path in key or []:
        try:
            secret, who = load_identity(key_path)
        except (OSError, ValueError) as exc:
            raise _fail(f"--key {key_path}: {exc}") from None
        names.append(who)
        keys.append(raw_public_key(secret))
    if not names:
        raise _fail("give a HANDLE (nickname@fingerprint) or --key KEYFILE")
    if database:
        from task_ingress.runtime.cluster import trust_cli

        enrolled: set[str] | dict[str, bytes] = trust_cli.allow(database, names, keys)
    else:
        try:
            allow(path, names, keys)
        except ValueError as exc:
            raise _fail(str(exc)) from None
        except OSError as exc:
            raise _edit_problem(path, exc) from None
        enrolled = read_keys(path)
    for who in names:
        typer.echo(f"allowed {who}")
        if handle_fingerprint(who) not in enrolled:
            typer.echo(f"note: {who} has no public key here, so a daemon's own NATS server "
                       "(per-peer users) does not admit it; add --pubkey KEY", err=True)


@trust_app.command("remove")
def trust_remove(handles: Annotated[list[str], typer.Argument(help="nickname@fingerprint")],
                 trust_file: TrustFile = None, daemon: Daemon = None,
                 database: Database = None) -> None:
    """Stop granting task.write to these handles' keys (effective at once)."""
    from task_ingress.runtime.nats.policy import disallow

    path = _policy_path(trust_file, daemon, database)
    if database:
        from task_ingress.runtime.cluster import trust_cli

        removed = trust_cli.disallow(database, handles)
    else:
        try:
            removed = disallow(path, handles)
        except ValueError as exc:
            raise _fail(str(exc)) from None
        except OSError as exc:
            raise _edit_problem(path, exc) from None
    for who in handles:
        typer.echo(("removed " if any(r.split("@")[1] == who.strip().rsplit("@", 1)[1]
                                      for r in removed) else "not present ") + who.strip())


@trust_app.command("list")
def trust_list(trust_file: TrustFile = None, daemon: Daemon = None,
               database: Database = None) -> None:
    """Print the allowed handles, one per line."""
    from task_ingress.runtime.nats.policy import listed

    path = _policy_path(trust_file, daemon, database)
    if database:
        from task_ingress.runtime.cluster import trust_cli

        handles = trust_cli.listed(database)
    else:
        handles = listed(path)
    for who in handles:
        typer.echo(who)


# ---- request -----------------------------------------------------------------------
ReadyFile = Annotated[str, typer.Option("--daemon", help="Ready file of the daemon.")]
KeyFile = Annotated[str, typer.Option("--key", help="Key file from `task-ingress keygen`.")]
Channel = Annotated[str, typer.Option("--channel", help="Channel to write in.")]
Workspace = Annotated[str | None, typer.Option("--workspace", help=(
    "Workspace (default: the daemon's)."))]
RequestId = Annotated[str | None, typer.Option("--request-id", help=(
    "Envelope id = request ID (default: a fresh one)."))]
Timeout = Annotated[float, typer.Option(help="Seconds to wait for each answer.")]


def _send(daemon: str, key: str, channel: str, workspace: str | None, request: Any,
          request_id: str | None, timeout: float) -> None:
    import asyncio

    from task_ingress.runtime.nats.client import (
        ClientError,
        DaemonAddress,
        Identity,
        PeerClient,
        connect,
    )
    from task_ingress.runtime.nats.identity import load_identity

    try:  # a stale file (dead pid) is refused at once, not after a timeout
        address = DaemonAddress.from_ready_file(daemon)
    except (OSError, ValueError) as exc:
        raise _ready_problem(daemon, exc) from None
    try:
        secret, who = load_identity(key)
    except (OSError, ValueError) as exc:
        raise _fail(f"cannot read the key {key}: {exc}") from None
    me = Identity(secret, who)
    ws = workspace or address.workspace

    async def go() -> dict[str, Any]:
        nc = await connect(address, "task-ingress-request", reconnects=0, timeout=timeout,
                           me=me)
        try:
            client = PeerClient(nc, address, timeout=timeout)
            await client.greet(me, ws, channel, ["task.write"])
            return await client.request(me, ws, channel, request, request_id)
        finally:
            await nc.close()

    try:
        outcome = asyncio.run(go())
    except ClientError as exc:
        raise _fail(f"{exc}") from None
    except Exception as exc:  # cannot connect, bad subject: a usage/connection error
        raise _fail(f"cannot reach the daemon at {address.nats_url}: {exc!r}") from None
    typer.echo(json.dumps({k: outcome.get(k) for k in (
        "accepted", "reason", "task_id", "run_id", "request_id")}, sort_keys=True))
    sys.stdout.flush()
    raise typer.Exit(0 if outcome.get("accepted") is True else 1)


def _build(kind: type[Any], **fields: Any) -> Any:
    from pydantic import ValidationError

    try:
        return kind(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"--{'-'.join(str(x) for x in e['loc']).replace('_', '-')}: "
                             f"{e['msg']}" for e in exc.errors())
        raise _fail(f"invalid request: {problems}") from None


def _metadata(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise _fail(f"--metadata wants KEY=VALUE, got {pair!r}")
        out[name] = value
    return out


@request_app.command("create")
def request_create(
    daemon: ReadyFile, key: KeyFile, channel: Channel,
    title: Annotated[str, typer.Option(help="Task title.")],
    description: Annotated[str | None, typer.Option(help="Description.")] = None,
    network_channel: Annotated[str | None, typer.Option(help="Bind to this channel.")] = None,
    priority: Annotated[int | None, typer.Option(help="0-100.")] = None,
    metadata: Annotated[list[str] | None, typer.Option(help="KEY=VALUE (repeatable).")] = None,
    workspace: Workspace = None, request_id: RequestId = None, timeout: Timeout = 10.0,
) -> None:
    """Create a task."""
    from task_ingress.messages.requests import CreateTask

    request = _build(CreateTask, title=title, description=description,
                     network_channel=network_channel, priority=priority,
                     metadata=_metadata(metadata))
    _send(daemon, key, channel, workspace, request, request_id, timeout)


@request_app.command("update")
def request_update(
    daemon: ReadyFile, key: KeyFile, channel: Channel,
    task_id: Annotated[str, typer.Option(help="Task to patch.")],
    title: Annotated[str | None, typer.Option(help="New title.")] = None,
    description: Annotated[str | None, typer.Option(help="New description.")] = None,
    network_channel: Annotated[str | None, typer.Option(help=(
        "Re-bind ('' clears).")) ] = None,
    metadata: Annotated[list[str] | None, typer.Option(help="KEY=VALUE (repeatable).")] = None,
    expected_version: Annotated[int | None, typer.Option(help="Optimistic check.")] = None,
    workspace: Workspace = None, request_id: RequestId = None, timeout: Timeout = 10.0,
) -> None:
    """Update a task."""
    from task_ingress.messages.requests import UpdateTask

    request = _build(UpdateTask, task_id=task_id, title=title, description=description,
                     network_channel=network_channel, metadata=_metadata(metadata),
                     expected_version=expected_version)
    _send(daemon, key, channel, workspace, request, request_id, timeout)


@request_app.command("cancel")
def request_cancel(
    daemon: ReadyFile, key: KeyFile, channel: Channel,
    task_id: Annotated[str, typer.Option(help="Task to cancel.")],
    reason: Annotated[str | None, typer.Option(help="Why.")] = None,
    workspace: Workspace = None, request_id: RequestId = None, timeout: Timeout = 10.0,
) -> None:
    """Cancel a task."""
    from task_ingress.messages.requests import CancelTask

    _send(daemon, key, channel, workspace, _build(CancelTask, task_id=task_id, reason=reason),
          request_id, timeout)


@request_app.command("enqueue")
def request_enqueue(
    daemon: ReadyFile, key: KeyFile, channel: Channel,
    task_id: Annotated[str, typer.Option(help="Task to run.")],
    idempotency_key: Annotated[str, typer.Option(help="Same key, same run.")],
    network_channel: Annotated[str | None, typer.Option(help="Must be ours if given.")] = None,
    workspace: Workspace = None, request_id: RequestId = None, timeout: Timeout = 10.0,
) -> None:
    """Enqueue a run of a task."""
    from task_ingress.messages.requests import EnqueueRun

    request = _build(EnqueueRun, task_id=task_id, idempotency_key=idempotency_key,
                     network_channel=network_channel)
    _send(daemon, key, channel, workspace, request, request_id, timeout)
