"""Bridge access tokens: signed for one account and token generation, refused when forged, tampered or expired."""

from __future__ import annotations

import secrets
import time

import pytest
from pydantic import SecretStr

from sdqueue.bridge import HTTP_STATUS, Account, BridgeError, issue_access_token, read_access_token
from sdqueue.config import BridgeSettings

ALICE = Account(user_id="a1b2c3", name="alice", token_generation=3)
BOB = Account(user_id="d4e5f6", name="bob", token_generation=0)


@pytest.fixture
def bridge() -> BridgeSettings:
    return BridgeSettings(token_secret=SecretStr(secrets.token_urlsafe(40)), access_token_ttl_s=600)


def refusal(token: str, *, bridge: BridgeSettings) -> str:
    with pytest.raises(BridgeError) as caught:
        read_access_token(token, bridge=bridge)
    assert HTTP_STATUS[caught.value.code] == 401
    return caught.value.code


def test_a_token_names_the_account_and_its_generation(bridge: BridgeSettings):
    claims = read_access_token(issue_access_token(ALICE, bridge=bridge), bridge=bridge)

    assert (claims.user_id, claims.token_generation) == (ALICE.user_id, ALICE.token_generation)


def test_forged_tampered_and_expired_tokens_are_refused(bridge: BridgeSettings):
    genuine = issue_access_token(ALICE, bridge=bridge)
    other_secret = bridge.model_copy(update={"token_secret": SecretStr(secrets.token_urlsafe(40))})
    header, _, signature = genuine.split(".")
    as_bob = issue_access_token(BOB, bridge=bridge).split(".")[1]

    assert refusal(issue_access_token(ALICE, bridge=other_secret), bridge=bridge) == "invalid_token"
    assert refusal(genuine[:-2] + "xx", bridge=bridge) == "invalid_token"
    assert refusal(f"{header}.{as_bob}.{signature}", bridge=bridge) == "invalid_token"
    assert refusal("not-a-jwt", bridge=bridge) == "invalid_token"
    expired = issue_access_token(ALICE, bridge=bridge, now=time.time() - bridge.access_token_ttl_s - 1)
    assert refusal(expired, bridge=bridge) == "token_expired"
