"""Logging set-up: quiet by default, JSON for machines, console text for people, and an
embedder's own structlog configuration is left alone."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog
from task_ingress.actors import log


class Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(log.LEVEL_ENV, raising=False)
    monkeypatch.delenv(log.FORMAT_ENV, raising=False)
    yield
    monkeypatch.undo()
    structlog.reset_defaults()
    log.configure()


def _emit(stream: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setattr("sys.stderr", stream)
    logger = log.get_logger(component="test")
    logger.info("test.info", peer_id="peer-a")
    logger.warning("test.warning", peer_id="peer-a")
    return stream.getvalue().splitlines()


def test_default_level_is_warning_so_a_library_stays_quiet(
        monkeypatch: pytest.MonkeyPatch) -> None:
    log.configure()
    lines = _emit(io.StringIO(), monkeypatch)
    assert len(lines) == 1 and "test.warning" in lines[0]
    assert not log.info_enabled()


def test_level_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(log.LEVEL_ENV, "info")
    log.configure()
    assert len(_emit(io.StringIO(), monkeypatch)) == 2
    assert log.info_enabled()


def test_json_lines_when_stderr_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    log.configure()
    (line,) = _emit(stream, monkeypatch)
    event = json.loads(line)
    assert event["event"] == "test.warning" and event["peer_id"] == "peer-a"


def test_console_text_when_stderr_is_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = Terminal()
    monkeypatch.setattr("sys.stderr", stream)
    log.configure()
    (line,) = _emit(stream, monkeypatch)
    assert "test.warning" in line and "peer_id" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_format_from_the_environment_beats_the_terminal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    stream = Terminal()
    monkeypatch.setattr("sys.stderr", stream)
    monkeypatch.setenv(log.FORMAT_ENV, "json")
    log.configure()
    (line,) = _emit(stream, monkeypatch)
    assert json.loads(line)["event"] == "test.warning"


def test_an_embedders_own_structlog_configuration_is_kept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    structlog.reset_defaults()
    monkeypatch.setattr(log, "_configured", False)
    seen: list[str] = []

    def keep(_logger: object, _name: str, event: dict[str, object]) -> str:
        seen.append(str(event["event"]))
        raise structlog.DropEvent

    structlog.configure(processors=[keep])
    assert log.info_enabled()  # the embedder's filter decides, not our default level
    log.get_logger().info("embedder.sees.info")
    assert seen == ["embedder.sees.info"]
