"""Known answers for AGH RFC 004 (Baseline Trust Profile) and RFC 8785 (JCS).

- RFC 8785's own examples (sections 3.2.2 and 3.2.3, appendix B) through the canonicalizer.
- An RFC 004 envelope signed with a fixed key gives a fixed signature.
- Each RFC 004 section 4.7 verification step, broken on its own, is `rejected`; section 3.3
  proof stripping is `rejected`; no proof from a plain ID is `unverified`.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from task_ingress.runtime.nats.identity import (
    PROFILE,
    Trust,
    b64url,
    canonical,
    evaluate,
    fingerprint,
    handle,
    key_id,
    raw_public_key,
    sign,
)

from tests.nats.nats_support import sign_rfc004

# RFC 8032 section 7.1 TEST 1 secret key: a published, fixed Ed25519 key.
SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
KEY = Ed25519PrivateKey.from_private_bytes(SEED)
PUB_HEX = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"


def test_rfc8785_section_3_2_2_example_canonicalizes_exactly() -> None:
    source = r'''{
      "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
      "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
      "literals": [null, true, false]
    }'''
    expected = ('{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,'
                '1e-27],"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}')
    assert canonical(json.loads(source)) == expected.encode()


def test_rfc8785_section_3_2_3_sorts_keys_by_utf16_code_units() -> None:
    source = ('{"\\u20ac": "Euro Sign", "\\r": "Carriage Return", "\\ufb33": "Hebrew Letter '
              'Dalet With Dagesh", "1": "One", "\\ud83d\\ude00": "Emoji: Grinning Face", '
              '"\\u0080": "Control", "\\u00f6": "Latin Small Letter O With Diaeresis"}')
    keys = list(json.loads(canonical(json.loads(source))))
    assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


@pytest.mark.parametrize(("value", "text"), [
    (0.0, "0"), (-0.0, "0"), (5e-324, "5e-324"), (-5e-324, "-5e-324"),
    (1.7976931348623157e308, "1.7976931348623157e+308"),
    (9007199254740992.0, "9007199254740992"), (2.9514790517935283e20, "295147905179352830000"),
    (1e21, "1e+21"), (1e23, "1e+23"), (0.000001, "0.000001"), (1e-7, "1e-7"),
    (333333333.3333332, "333333333.3333332"),
])
def test_rfc8785_appendix_b_numbers(value: float, text: str) -> None:
    assert canonical(value) == text.encode()


def test_the_fixed_key_has_its_published_public_key_fingerprint_and_key_id() -> None:
    pub = raw_public_key(KEY)
    assert pub.hex() == PUB_HEX
    assert fingerprint(pub) == key_id(pub)[7:39]
    assert handle("patch-worker", KEY) == f"patch-worker@{fingerprint(pub)}"


def _fixed_envelope() -> dict[str, Any]:
    me = handle("patch-worker", KEY)
    return {
        "protocol": "agh-network/v1", "id": "msg_verified_thread_say_01",
        "workspace_id": "ws_alpha", "kind": "say", "channel": "builders",
        "surface": "thread", "thread_id": "thread_trust_profile", "from": me, "to": None,
        "reply_to": None, "trace_id": "trace_verified_thread_example", "causation_id": None,
        "ts": 1775606300, "expires_at": None,
        "body": {"text": "Baseline proof example for a public thread.", "artifacts": []},
        "ext": {}}


def test_an_rfc004_envelope_signed_with_a_fixed_key_gives_a_fixed_signature() -> None:
    signed = sign(_fixed_envelope(), KEY)
    proof = signed["proof"]
    pub = raw_public_key(KEY)
    assert proof["profile"] == PROFILE and proof["alg"] == "Ed25519"
    assert proof["key_id"] == key_id(pub) and proof["pubkey"] == b64url(pub)
    # Ed25519 is deterministic: same key, same canonical bytes, same signature.
    assert proof["sig"] == sign(_fixed_envelope(), KEY)["proof"]["sig"]
    assert proof["sig"] == FIXED_SIG
    assert sign_rfc004(_fixed_envelope(), KEY)["proof"]["sig"] == FIXED_SIG  # independent
    assert evaluate(signed).trust is Trust.VERIFIED


FIXED_SIG = ("3kHAhxF-QxHJib50TWWOW1zaN4Ok7n0KSec1IsnPhafmajCTXsreuLnh3mfnMQ_w_JzRH9vZ-r7CTHsv"
             "HLxuDg")


def _broken(step: str) -> dict[str, Any]:
    signed = sign(_fixed_envelope(), KEY)
    env = copy.deepcopy(signed)
    proof = env["proof"]
    other = Ed25519PrivateKey.generate()
    if step == "profile":
        proof["profile"] = "agh-network.trust.ed25519-jcs/v2"
    elif step == "alg":
        proof["alg"] = "ed25519"
    elif step == "pubkey":
        proof["pubkey"] = "not base64url!"
    elif step == "key_id":
        proof["key_id"] = key_id(raw_public_key(other))
    elif step == "fingerprint":
        env["from"] = handle("patch-worker", other)
    elif step == "stripped":
        env["proof"] = None
    elif step == "signed_field":
        env["body"]["text"] = "Baseline proof example, altered."
    elif step == "absent_vs_null":
        del env["to"]  # absence is signed too: no default injection
    elif step == "sig":
        proof["sig"] = b64url(other.sign(canonical({**signed, "proof": {
            k: v for k, v in proof.items() if k != "sig"}})))
    return env


@pytest.mark.parametrize("step", ["profile", "alg", "pubkey", "key_id", "fingerprint",
                                  "stripped", "signed_field", "absent_vs_null", "sig"])
def test_each_verification_step_rejects_on_its_own(step: str) -> None:
    judged = evaluate(_broken(step))
    assert judged.trust is Trust.REJECTED, judged


def test_a_plain_sender_without_proof_is_unverified_and_with_a_foreign_profile_too() -> None:
    env = {**_fixed_envelope(), "from": "patch-worker", "proof": None}
    assert evaluate(env).trust is Trust.UNVERIFIED
    foreign = {**env, "proof": {"profile": "x.example/v1", "sig": "AA"}}
    assert evaluate(foreign).trust is Trust.UNVERIFIED


def test_rfc004_section_8_1_example_identity_checks_pass_and_its_placeholder_sig_fails() -> None:
    """The RFC's worked example: its pubkey, key_id and handle agree (steps 1-6); its `sig`
    is a documented placeholder, so step 8 rejects it."""
    example = {
        "protocol": "agh-network/v1", "id": "msg_verified_thread_say_01",
        "workspace_id": "ws_alpha", "kind": "say", "channel": "builders",
        "surface": "thread", "thread_id": "thread_trust_profile",
        "from": "patch-worker@39f713d0a644253f04529421b9f51b9b", "to": None,
        "reply_to": None, "trace_id": "trace_verified_thread_example", "causation_id": None,
        "ts": 1775606300, "expires_at": None,
        "body": {"text": "Baseline proof example for a public thread.", "artifacts": []},
        "proof": {"profile": PROFILE, "alg": "Ed25519",
                  "key_id": "sha256:39f713d0a644253f04529421b9f51b9b08979d08295959c4f3990ee"
                            "617f5139f",
                  "pubkey": "PUAXw-hDiVqStwqnTRt-vJyYLM8uxJaMwM1V8Sr0Zgw",
                  "sig": "q" * 85 + "g"},
        "ext": {}}
    judged = evaluate(example)
    assert judged.trust is Trust.REJECTED and judged.detail == "signature does not verify"
