"""Hostile tokens through the real worker: algorithm confusion, foreign keys, bad claims on the JWKS path, replays.

tests/e2e/test_rejections.py covers the HS256 path (missing, malformed, wrong secret, alg none, expired, aud, iss, jti,
nbf, scope) and a body swapped under an HS256 token; here the same checks must hold for RS256 and EdDSA keys too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import OKPAlgorithm

from sdqueue.client import SdqueueClient, bearer, request_body
from sdqueue.config import Settings
from sdqueue.contracts import ErrorCode, SucceededEvent
from sdqueue.contracts.topology import record_key
from tests.e2e.requests import (
    claims,
    hmac_forged,
    hs256,
    raw_message,
    signed_message,
    signed_with,
    txt2img,
    unsigned_with_header,
)
from tests.faults import QUIET_AFTER_S, expect_rejection, expect_unreported
from tests.plugins.stack import BrokerProbe, EventLog, SigningKeys, WorkerProcess

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

GENERATION_TIMEOUT_S = 90.0
# S3 LastModified has one-second resolution; wait longer than that before anything that could overwrite.
CLOCK_TICK_S = 1.1
ATTACKER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ATTACKER_EC = ec.generate_private_key(ec.SECP256R1())
ATTACKER_ED25519 = ed25519.Ed25519PrivateKey.generate()


@dataclass(frozen=True)
class Minting:
    """Valid claims for the body being sent, and the keys the session worker trusts."""

    claims: dict[str, Any]
    keys: SigningKeys

    def rs256(self, **overrides: Any) -> str:
        """RS256 with the trusted RSA key under its own kid; `kid=` names another kid, None none."""
        kid = overrides.pop("kid", self.keys.rsa_kid)
        return signed_with(self.with_claims(**overrides), self.keys.rsa, algorithm="RS256", kid=kid)

    def eddsa(self, **overrides: Any) -> str:
        """EdDSA with the trusted Ed25519 key under its own kid; `kid=` names another kid, None none."""
        kid = overrides.pop("kid", self.keys.ed25519_kid)
        return signed_with(self.with_claims(**overrides), self.keys.ed25519, algorithm="EdDSA", kid=kid)

    def with_claims(self, **overrides: Any) -> dict[str, Any]:
        """The claims with some replaced, or removed where the value is None."""
        merged = self.claims | overrides
        return {name: value for name, value in merged.items() if value is not None}


def _minting(body: bytes, *, job_id: str, settings: Settings, keys: SigningKeys) -> Minting:
    return Minting(claims=claims(body, job_id=job_id, auth=settings.auth), keys=keys)


def _rsa_public_pem(keys: SigningKeys) -> bytes:
    public = keys.rsa.public_key()
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _ed25519_public_raw(keys: SigningKeys) -> bytes:
    return keys.ed25519.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _none_with_trusted_kid(m: Minting) -> str:
    return jwt.encode(m.claims, key="", algorithm="none", headers={"kid": m.keys.rsa_kid})


def _foreign_key_in_header(m: Minting) -> str:
    # The worker must take keys from its JWKS by kid, never from the token: `jwk` and `jku` are attacker-controlled.
    attacker_jwk = OKPAlgorithm.to_jwk(ATTACKER_ED25519.public_key(), as_dict=True)
    headers = {"kid": m.keys.ed25519_kid, "jwk": attacker_jwk, "jku": "http://127.0.0.1:9/jwks.json"}
    return jwt.encode(m.claims, ATTACKER_ED25519, algorithm="EdDSA", headers=headers)


def _expired(m: Minting) -> str:
    now = int(time.time())
    return m.rs256(exp=now - 60, iat=now - 120)


TokenCase = Callable[[Minting], str]


@pytest.mark.parametrize(
    ("make_token", "code"),
    [
        pytest.param(_none_with_trusted_kid, None, id="alg none with the trusted RSA kid"),
        pytest.param(
            lambda m: unsigned_with_header(m.claims, {"alg": "NONE", "typ": "JWT"}),
            None,
            id="alg NONE in capitals",
        ),
        pytest.param(_foreign_key_in_header, None, id="foreign key embedded as jwk and jku"),
        pytest.param(
            lambda m: hmac_forged(m.claims, _rsa_public_pem(m.keys), kid=m.keys.rsa_kid),
            None,
            id="HS256 keyed with the RSA public PEM",
        ),
        pytest.param(
            lambda m: hmac_forged(m.claims, _rsa_public_pem(m.keys), kid=None),
            None,
            id="HS256 keyed with the RSA public PEM, no kid",
        ),
        pytest.param(
            lambda m: hmac_forged(m.claims, _ed25519_public_raw(m.keys), kid=m.keys.ed25519_kid),
            None,
            id="HS256 keyed with the Ed25519 public key bytes",
        ),
        pytest.param(lambda m: m.rs256(kid="no-such-kid"), None, id="RS256 unknown kid"),
        pytest.param(lambda m: m.rs256(kid=None), None, id="RS256 without kid"),
        pytest.param(
            lambda m: signed_with(m.claims, ATTACKER_RSA, algorithm="RS256", kid=m.keys.rsa_kid),
            None,
            id="RS256 by a foreign key under the trusted kid",
        ),
        pytest.param(lambda m: m.eddsa(kid=m.keys.rsa_kid), None, id="EdDSA under the RSA kid"),
        pytest.param(lambda m: m.rs256(kid=m.keys.ed25519_kid), None, id="RS256 under the Ed25519 kid"),
        pytest.param(
            lambda m: signed_with(m.claims, ATTACKER_EC, algorithm="ES256", kid=m.keys.rsa_kid),
            None,
            id="ES256 not in the allow-list",
        ),
        pytest.param(_expired, ErrorCode.TOKEN_EXPIRED, id="RS256 expired"),
        pytest.param(lambda m: m.eddsa(nbf=int(time.time()) + 600), ErrorCode.INVALID_TOKEN, id="EdDSA nbf in future"),
        pytest.param(lambda m: m.rs256(iss="mallory"), None, id="RS256 wrong iss"),
        pytest.param(lambda m: m.eddsa(aud="someone-else"), ErrorCode.INVALID_TOKEN, id="EdDSA wrong aud"),
        pytest.param(lambda m: m.eddsa(jti="another-job"), None, id="EdDSA jti is another job"),
        pytest.param(lambda m: m.rs256(exp=None), ErrorCode.INVALID_TOKEN, id="RS256 exp missing"),
        pytest.param(lambda m: m.eddsa(scope=None), ErrorCode.INVALID_TOKEN, id="EdDSA scope claim missing"),
        pytest.param(
            lambda m: m.rs256(scope="sdqueue:cancel openid"), ErrorCode.FORBIDDEN, id="RS256 scope without generate"
        ),
    ],
)
async def test_bad_token_is_rejected_without_a_record(
    make_token: TokenCase,
    code: ErrorCode | None,
    client: SdqueueClient,
    probe: BrokerProbe,
    worker: WorkerProcess,
    stack_settings: Settings,
    signing_keys: SigningKeys,
):
    """A token no trusted key signed for this job is dead-lettered unreported (None); a verified one failing its
    claims gets its one failed event."""
    request = txt2img()
    body = request.model_dump_json().encode()
    token = make_token(_minting(body, job_id=request.job_id, settings=stack_settings, keys=signing_keys))
    message = raw_message(body, job_id=request.job_id, authorization=bearer(token))

    if code is None:
        await expect_unreported(message, job_id=request.job_id, client=client, probe=probe, worker=worker)
    else:
        rejection = await expect_rejection(
            message, job_id=request.job_id, code=code, client=client, probe=probe, worker=worker
        )
        assert rejection.types == ["failed"]
    assert await client.read_record(request.job_id) is None, "an unverified caller must not write a record"


@pytest.mark.parametrize("algorithm", ["RS256", "EdDSA"])
async def test_body_swapped_under_a_valid_token_is_rejected_without_a_record(
    algorithm: str,
    client: SdqueueClient,
    probe: BrokerProbe,
    worker: WorkerProcess,
    stack_settings: Settings,
    signing_keys: SigningKeys,
):
    request = txt2img()
    signed_body = request.model_dump_json().encode()
    minting = _minting(signed_body, job_id=request.job_id, settings=stack_settings, keys=signing_keys)
    token = minting.rs256() if algorithm == "RS256" else minting.eddsa()
    swapped = txt2img(job_id=request.job_id, prompt="a prompt the signer never saw").model_dump_json().encode()

    rejection = await expect_rejection(
        raw_message(swapped, job_id=request.job_id, authorization=bearer(token)),
        job_id=request.job_id,
        code=ErrorCode.BODY_MISMATCH,
        client=client,
        probe=probe,
        worker=worker,
    )

    assert rejection.types == ["failed"]
    assert await client.read_record(request.job_id) is None


@pytest.mark.parametrize("algorithm", ["RS256", "EdDSA"])
async def test_valid_asymmetric_token_succeeds(
    algorithm: str, client: SdqueueClient, stack_settings: Settings, signing_keys: SigningKeys
):
    request = txt2img()
    body = request_body(request)  # what `generate` will send, so the token's body_sha256 matches
    minting = _minting(body, job_id=request.job_id, settings=stack_settings, keys=signing_keys)
    token = minting.rs256(sub="alice") if algorithm == "RS256" else minting.eddsa(sub="alice")

    event = await client.generate(request, token=token, timeout_s=GENERATION_TIMEOUT_S)

    assert [image.key for image in event.images] == [f"outputs/{request.job_id}/0.png"]
    assert await client.read_record(request.job_id) == event


async def test_replayed_message_of_a_finished_job_is_answered_from_its_record(
    client: SdqueueClient, probe: BrokerProbe, stack_settings: Settings, s3_client: S3Client
):
    request = txt2img()
    body = request.model_dump_json().encode()
    token = hs256(claims(body, job_id=request.job_id, auth=stack_settings.auth), stack_settings.auth)
    log = await probe.watch(request.job_id)

    await client.publish_raw(
        raw_message(body, job_id=request.job_id, authorization=bearer(token)), routing_key="default"
    )
    await _wait_for_count(log, "succeeded", count=1)
    [first] = log.of_type("succeeded")
    assert isinstance(first, SucceededEvent)
    keys = [image.key for image in first.images] + [record_key(request.job_id)]
    stored_before = await _heads(s3_client, bucket=stack_settings.s3.bucket, keys=keys)
    await asyncio.sleep(CLOCK_TICK_S)

    await client.publish_raw(
        raw_message(body, job_id=request.job_id, authorization=bearer(token)), routing_key="default"
    )
    await _wait_for_count(log, "succeeded", count=2)
    await asyncio.sleep(QUIET_AFTER_S)

    assert len(log.of_type("started")) == 1, "the replay was generated again"
    assert not log.of_type("failed")
    assert log.of_type("succeeded") == [first, first]
    assert await _heads(s3_client, bucket=stack_settings.s3.bucket, keys=keys) == stored_before
    assert await probe.dead_letter(request.job_id, timeout_s=1.0) is None, "a replay is answered and acked"


async def test_another_subject_cannot_take_a_finished_job_id(
    client: SdqueueClient,
    probe: BrokerProbe,
    worker: WorkerProcess,
    stack_settings: Settings,
    s3_client: S3Client,
):
    request = txt2img()
    first = await client.generate(request, timeout_s=GENERATION_TIMEOUT_S)
    keys = [image.key for image in first.images] + [record_key(request.job_id)]
    stored_before = await _heads(s3_client, bucket=stack_settings.s3.bucket, keys=keys)
    await asyncio.sleep(CLOCK_TICK_S)
    theirs = txt2img(job_id=request.job_id, prompt="mallory's picture").model_dump_json().encode()

    # The job id is the first caller's: mallory's request is dead-lettered and nothing is said on its events.
    await expect_unreported(
        signed_message(theirs, job_id=request.job_id, auth=stack_settings.auth, sub="mallory"),
        job_id=request.job_id,
        client=client,
        probe=probe,
        worker=worker,
    )

    assert await client.read_record(request.job_id) == first
    assert await _heads(s3_client, bucket=stack_settings.s3.bucket, keys=keys) == stored_before


async def _wait_for_count(log: EventLog, event_type: str, *, count: int) -> None:
    async with asyncio.timeout(GENERATION_TIMEOUT_S):
        while len(log.of_type(event_type)) < count:
            log.changed.clear()
            await log.changed.wait()


async def _heads(s3: S3Client, *, bucket: str, keys: list[str]) -> dict[str, tuple[str, datetime]]:
    """ETag and LastModified of each object: both change on any overwrite."""
    heads = {}
    for key in keys:
        head = await asyncio.to_thread(s3.head_object, Bucket=bucket, Key=key)
        heads[key] = (head["ETag"], head["LastModified"])
    return heads
