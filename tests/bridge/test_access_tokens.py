"""Bridge access tokens: a caller's token is verified once, and its expiry still holds on every later request."""

from __future__ import annotations

import secrets
import time

import pytest
from pydantic import SecretStr

from sdqueue.bridge import BridgeError, issue_access_token, read_access_token
from sdqueue.bridge._auth import AccessTokens
from sdqueue.config import BridgeSettings


@pytest.fixture
def bridge() -> BridgeSettings:
    return BridgeSettings(token_secret=SecretStr(secrets.token_urlsafe(40)), access_token_ttl_s=600)


def refusal(tokens: AccessTokens, token: str, *, now: float | None = None) -> str:
    with pytest.raises(BridgeError) as caught:
        tokens.user_of(token, now=now)
    assert caught.value.status == 401
    return caught.value.code


def test_a_remembered_token_still_expires(bridge: BridgeSettings):
    issued = time.time()
    token = issue_access_token("alice", bridge=bridge, now=issued)
    tokens = AccessTokens(bridge)

    assert tokens.user_of(token, now=issued + 1) == "alice"
    assert tokens.user_of(token, now=issued + 599) == "alice"
    assert len(tokens) == 1
    assert refusal(tokens, token, now=issued + 600) == "token_expired"


def test_refused_tokens_are_not_remembered(bridge: BridgeSettings):
    tokens = AccessTokens(bridge)
    genuine = issue_access_token("alice", bridge=bridge)
    other_secret = bridge.model_copy(update={"token_secret": SecretStr(secrets.token_urlsafe(40))})
    forged = issue_access_token("alice", bridge=other_secret)
    expired = issue_access_token("alice", bridge=bridge, now=time.time() - 3600)

    assert refusal(tokens, forged) == "invalid_token"
    assert refusal(tokens, genuine[:-2] + "xx") == "invalid_token"
    assert refusal(tokens, "not-a-jwt") == "invalid_token"
    assert refusal(tokens, expired) == "token_expired"
    assert len(tokens) == 0
    assert tokens.user_of(genuine) == "alice"


def test_tampering_with_a_remembered_token_is_still_caught(bridge: BridgeSettings):
    tokens = AccessTokens(bridge)
    token = issue_access_token("alice", bridge=bridge)
    assert tokens.user_of(token) == "alice"

    header, _, signature = token.split(".")
    as_bob = issue_access_token("bob", bridge=bridge).split(".")[1]

    assert refusal(tokens, f"{header}.{as_bob}.{signature}") == "invalid_token"


def test_the_oldest_tokens_make_room(bridge: BridgeSettings):
    tokens = AccessTokens(bridge, max_entries=2)
    names = ["alice", "bob", "carol"]
    issued = [issue_access_token(name, bridge=bridge) for name in names]

    answered = [tokens.user_of(token) for token in issued]

    assert answered == names
    assert len(tokens) == 2
    assert [tokens.user_of(token) for token in issued] == names  # evicted tokens verify again


def test_the_uncached_reader_gives_the_same_answers(bridge: BridgeSettings):
    issued = time.time()
    token = issue_access_token("alice", bridge=bridge, now=issued)

    assert read_access_token(token, bridge=bridge, now=issued + 599) == "alice"
    with pytest.raises(BridgeError) as expired:
        read_access_token(token, bridge=bridge, now=issued + 600)
    assert expired.value.code == "token_expired"
