"""The event loop daemons and NATS clients run on: uvloop when installed, else asyncio's."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop
from task_ingress.runtime import eventloop
from task_ingress.runtime.eventloop import EVENT_LOOP_ENV


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_run_uses_uvloop_when_it_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)
    assert isinstance(eventloop.run(_running_loop()), uvloop.Loop)
    loop = eventloop.new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_the_standard_loop_is_used_when_uvloop_cannot_be_imported(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    loop = eventloop.run(_running_loop())
    assert isinstance(loop, asyncio.BaseEventLoop) and not isinstance(loop, uvloop.Loop)


def test_the_environment_can_ask_for_the_standard_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, "asyncio")
    assert not isinstance(eventloop.run(_running_loop()), uvloop.Loop)
    monkeypatch.setenv(EVENT_LOOP_ENV, " UVLOOP ")
    assert isinstance(eventloop.run(_running_loop()), uvloop.Loop)


def test_an_unknown_loop_name_is_refused_and_its_coroutine_closed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, "trio")
    main = _running_loop()
    with pytest.raises(ValueError, match="trio"):
        eventloop.run(main)
    assert main.cr_frame is None  # closed: no "never awaited" warning, nothing left running
