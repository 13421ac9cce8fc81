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


@pytest.mark.parametrize("argv", [
    ["swarm", "--transport", "nats", "--nats-url", "nats://127.0.0.1:1", "--requests", "5"],
    ["bench", "--systems", "daemon-nats", "--requests", "5"],
])
def test_swarm_and_bench_over_nats_refuse_an_unknown_event_loop_name_in_one_line(
        argv: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from task_ingress.runtime.cli import app
    from task_ingress.runtime.cli_exit import run

    monkeypatch.setenv(EVENT_LOOP_ENV, "uvlop")
    assert run(app, argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"task-ingress {argv[0]}: TASK_INGRESS_EVENT_LOOP must be 'uvloop' or 'asyncio', "
        "not 'uvlop'")
