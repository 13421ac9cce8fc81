"""The OS processes of one runtime's actors: found by what appeared when the actor system
started, and reaped at close so that none outlives the runtime."""

from __future__ import annotations

import contextlib
import os

import psutil
from task_ingress.actors.log import get_logger


class ActorProcesses:
    """Tracks the processes a multiprocess actor system starts (none on simpleSystemBase).

    Thespian's admin daemonizes (setsid, then forks again): it and the actors are no
    children of ours, but their session ID is the PID of our child that called setsid.
    """

    def __init__(self) -> None:
        self.children_before: set[int] = set()
        self.sessions: set[int] = set()

    def before_start(self) -> None:
        """Remember our children before the actor system starts: those are not ours to reap."""
        self.children_before = {p.pid for p in psutil.Process().children(recursive=True)}

    def after_start(self) -> None:
        """Remember the sessions of the children the actor system just started."""
        self.sessions = {p.pid for p in psutil.Process().children()
                         if p.pid not in self.children_before}

    def pids(self) -> list[int]:
        """PIDs of the live processes running this runtime's actors."""
        exe = psutil.Process().exe()
        return [p.pid for p in _session_members(self.sessions, exe, {os.getpid()})]

    def reap(self) -> None:
        """Actor processes (forks of this Python) born after start must not outlive us.

        Other children (a nats-server the daemon started, say) are not ours to touch.
        """
        me = psutil.Process(os.getpid())
        exe = me.exe()
        ours = []
        for proc in me.children(recursive=True):
            if proc.pid in self.children_before:
                continue
            try:
                # Exited actor processes linger as zombies until waited for: reap them too.
                if proc.status() == psutil.STATUS_ZOMBIE or proc.exe() == exe:
                    ours.append(proc)
            except psutil.ZombieProcess:
                ours.append(proc)
            except psutil.Error:
                continue
        ours += _session_members(self.sessions, exe, {p.pid for p in ours} | {me.pid})
        _, alive = psutil.wait_procs(ours, timeout=3)
        for proc in alive:
            get_logger(component="driver").warning("driver.killing_leftover_actor",
                                                    pid=proc.pid)
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)


def _session_members(sessions: set[int], exe: str, skip: set[int]) -> list[psutil.Process]:
    """Live processes running `exe` in these sessions (the daemonized actor system's tree;
    not our children, so a zombie among them is its parent's to reap, not ours)."""
    members = []
    for proc in psutil.process_iter() if sessions else ():
        try:
            if (proc.pid not in skip and os.getsid(proc.pid) in sessions
                    and proc.status() != psutil.STATUS_ZOMBIE and proc.exe() == exe):
                members.append(proc)
        except (OSError, psutil.Error):
            continue
    return members
