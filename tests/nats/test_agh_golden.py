"""Golden AGH envelopes: the worked examples of AGH's RFC 003 section 13 (copied verbatim
into golden/rfc003_examples.json from `compozy/agh` docs/rfcs/003_agh-network-v0.md) and a
greet as AGH's manager builds it, in a ULID workspace. The daemon's parser and the
test-side checker both accept them; AGH's own kinds are understood."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from task_ingress.runtime.nats import envelope as wire
from task_ingress.runtime.nats.identity import Trust, evaluate

from tests.nats.agh_rules import agh_problems

EXAMPLES: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "golden" / "rfc003_examples.json").read_text())
RFC_NOW = 1775606500  # within every example's replay window and before its expires_at


@pytest.mark.parametrize("example", EXAMPLES, ids=[e["id"] for e in EXAMPLES])
def test_rfc003_examples_pass_aghs_rules_on_both_sides(example: dict[str, Any]) -> None:
    if example["kind"] == "capability":
        # AGH's code is stricter than its RFC's example: validate.go:287 requires work_id
        # on every capability (compiled AGH refuses this example the same way).
        assert "capability needs work_id" in agh_problems(example, RFC_NOW)
        with pytest.raises(wire.EnvelopeError):
            wire.validate_object(example, now=RFC_NOW)
        return
    assert agh_problems(example, RFC_NOW) == []
    env = wire.validate_object(example, now=RFC_NOW)
    assert (env.id, env.kind, env.workspace_id) == (example["id"], example["kind"], "ws_alpha")
    assert evaluate(example).trust is Trust.UNVERIFIED  # v0: no proof


def test_a_greet_as_aghs_manager_builds_it_in_a_ulid_workspace_parses() -> None:
    # DefaultPeerCard (peer.go:123) + localPeerCardFromJoinRequest (manager.go:496) +
    # PublishGreet (router.go:197): omitempty fields absent, proof null.
    greet = {"protocol": "agh-network/v0", "id": "msg_01JDQ90ABCDEF",
             "workspace_id": "01JDQ8Z6X4V7K2M9N3P5R8T1W0", "kind": "greet",
             "channel": "builders", "from": "coder.sess-abc", "ts": RFC_NOW,
             "body": {"peer_card": {"peer_id": "coder.sess-abc", "display_name": "coder",
                                    "profiles_supported": ["agh-network/v0"],
                                    "capabilities": [], "artifacts_supported": ["capability"],
                                    "trust_modes_supported": []}},
             "proof": None}
    assert agh_problems(greet, RFC_NOW) == []
    env = wire.parse_envelope(json.dumps(greet).encode(), now=RFC_NOW)
    assert env.workspace_id == "01JDQ8Z6X4V7K2M9N3P5R8T1W0"
    assert wire.card_capabilities(env.body["peer_card"]) == []
