"""The ready file: written (atomically, mode 0600) once the daemon serves; read by clients.

It holds what a local client needs: the NATS URL and how to authenticate there
(`nats_auth`: `nkey` = connect as your own key's NATS user with the inbox prefix
`_INBOX.<fingerprint>`; `token` = `credentials.token`, shared by everyone; `url` = the
user:password in `nats_url`), the trust policy file, the daemon's v0 peer ID and route
token, its v1 handle, fingerprint, public key and nkey, the store path and the workspace.
With per-peer users on its own server it also holds the operator credential
(`credentials.operator_seed`, an nkey seed made per run) that may read every subject of
the workspace. It contains secrets, hence 0600. The daemon removes it whenever it exits (a
graceful stop, a second signal's hard exit, a failed start); only SIGKILL or a power cut
leave it behind, and clients check the pid in it before they wait for an answer.
"""

from __future__ import annotations

import contextlib
import json
import os

from pydantic import BaseModel, ConfigDict, Field
from task_ingress.actors.storage.files import replace_private_file


class ReadyInfo(BaseModel):
    """Contents of the ready file."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    nats_url: str
    pid: int
    trust_file: str
    nats_auth: str = Field(default="token", description=(
        "nkey (your key is your NATS user), token (credentials.token) or url (in nats_url)."))
    credentials: dict[str, str] = Field(default_factory=dict, description=(
        "{'token': ...}, or {'operator_seed': 'SU…', 'operator_nkey': 'U…'} with per-peer "
        "users."))
    store: str
    workspace: str
    channels: list[str] = Field(default_factory=list, description="[] = all channels")
    daemon_peer_id: str
    daemon_route_token: str
    daemon_handle: str = Field(description="Verified handle nickname@fingerprint (v1).")
    daemon_fingerprint: str = Field(description="v1 route token: the key's fingerprint.")
    daemon_public_key: str = Field(description="base64url raw Ed25519 public key.")
    daemon_nkey: str = Field(default="", description="The daemon's NATS user (its key).")
    greet_interval: float
    metrics_url: str | None = None


def write_ready_file(path: str, info: ReadyInfo) -> None:
    """Write `info` to `path` atomically with mode 0600."""
    replace_private_file(path, info.model_dump_json(indent=2) + "\n")


def read_ready_file(path: str) -> ReadyInfo:
    """Parse a ready file; raises ValueError/OSError when missing or malformed."""
    with open(path, encoding="utf-8") as fh:
        return ReadyInfo.model_validate(json.load(fh))


def cluster_node(path: str) -> str | None:
    """The `node_id` of the cluster daemon that wrote the ready file at `path`, None for a
    single daemon's (or an unreadable file: reading it properly says why)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    node = data.get("node_id") if isinstance(data, dict) else None
    return str(node) if node else None


class DaemonNotRunning(ValueError):
    """The ready file names a process that is gone: the daemon died without removing it."""


def daemon_running(path: str, info: ReadyInfo) -> bool:
    """Whether the ready file's pid is a live process that started before the file was
    written (a pid the system reused afterwards belongs to someone else)."""
    import psutil

    try:
        proc = psutil.Process(info.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = proc.create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # alive but not ours to inspect (another user): assume it is the daemon
    try:
        written = os.stat(path).st_mtime
    except OSError:
        return True
    return bool(started <= written + 1.0)


def read_live_ready_file(path: str) -> ReadyInfo:
    """`read_ready_file`, then the pid check; raises DaemonNotRunning for a stale file."""
    info = read_ready_file(path)
    if not daemon_running(path, info):
        raise DaemonNotRunning(
            f"the daemon in {path} (pid {info.pid}) is not running; start it with "
            f"`task-ingress serve --ready-file {path}` (or delete the stale file)")
    return info


def remove_ready_file(path: str, pid: int) -> None:
    """Remove the ready file if it is still ours (another daemon may have replaced it)."""
    with contextlib.suppress(OSError, ValueError):
        if read_ready_file(path).pid == pid:
            os.unlink(path)
