"""Token verification with real keys: HS256 shared secret and JWKS public keys (RS256, EdDSA)."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm
from pydantic import SecretStr

from sdqueue.config import AuthSettings, IssuerKeys
from sdqueue.contracts import ErrorCode, body_sha256
from sdqueue.contracts.errors import SdqueueError
from sdqueue.worker.verify import load_keys, verify_token

SECRET = "a-shared-secret-of-at-least-32-bytes!!"
BODY = b'{"job_id": "job-1"}'
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def auth(tmp_path_factory: pytest.TempPathFactory) -> AuthSettings:
    rsa_jwk = json.loads(RSAAlgorithm.to_jwk(RSA_KEY.public_key())) | {"kid": "rsa-1", "use": "sig"}
    ed_jwk = json.loads(OKPAlgorithm.to_jwk(ED_KEY.public_key())) | {"kid": "ed-1", "use": "sig"}
    jwks = tmp_path_factory.mktemp("keys") / "jwks.json"
    jwks.write_text(json.dumps({"keys": [rsa_jwk, ed_jwk]}))
    return AuthSettings(
        issuers=("issuer-a", "issuer-b"),
        algorithms=("HS256", "RS256", "EdDSA"),
        hs256_secret=SecretStr(SECRET),
        jwks_file=jwks,
        issuer_keys={"issuer-b": IssuerKeys(jwks_file=jwks)},
    )


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    values = {
        "iss": "issuer-a",
        "aud": "sdqueue",
        "sub": "alice",
        "iat": now,
        "exp": now + 60,
        "jti": "job-1",
        "body_sha256": body_sha256(BODY),
        "scope": "sdqueue:generate",
        **overrides,
    }
    return {key: value for key, value in values.items() if value is not None}


def _verify(token: str, auth: AuthSettings, *, body: bytes = BODY) -> Any:
    return verify_token(f"Bearer {token}", body=body, job_id="job-1", auth=auth, keys=load_keys(auth))


def _code(token: str, auth: AuthSettings, *, body: bytes = BODY) -> ErrorCode:
    with pytest.raises(SdqueueError) as caught:
        _verify(token, auth, body=body)
    assert caught.value.retryable is False
    return ErrorCode(caught.value.code)  # a wire code, never a bridge-only one


def test_hs256_rs256_and_eddsa_tokens_verify(auth: AuthSettings):
    tokens = [
        jwt.encode(_claims(), SECRET, algorithm="HS256"),
        jwt.encode(_claims(iss="issuer-b"), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"}),
        jwt.encode(_claims(sub="bob"), ED_KEY, algorithm="EdDSA", headers={"kid": "ed-1"}),
    ]

    subjects = [_verify(token, auth).subject for token in tokens]

    assert subjects == ["alice", "alice", "bob"]


def test_hs256_signed_with_the_rsa_public_key_is_rejected(auth: AuthSettings):
    public_pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # PyJWT refuses to HMAC-sign with a PEM key, so build the forged token by hand, as an attacker would.
    forged = jwt.api_jws.PyJWS()
    forged._algorithms["HS256"].prepare_key = lambda key: key  # type: ignore[method-assign]
    token = forged.encode(json.dumps(_claims()).encode(), public_pem, algorithm="HS256", headers={"kid": "rsa-1"})

    assert _code(token, auth) is ErrorCode.INVALID_TOKEN


@pytest.mark.parametrize(
    ("make_token", "code"),
    [
        (lambda: jwt.encode(_claims(), "", algorithm="none"), ErrorCode.INVALID_TOKEN),
        (lambda: jwt.encode(_claims(), RSA_KEY, algorithm="RS256", headers={"kid": "nope"}), ErrorCode.INVALID_TOKEN),
        (lambda: jwt.encode(_claims(), RSA_KEY, algorithm="RS256", headers={"kid": "ed-1"}), ErrorCode.INVALID_TOKEN),
        (lambda: jwt.encode(_claims(), RSA_KEY, algorithm="PS256", headers={"kid": "rsa-1"}), ErrorCode.INVALID_TOKEN),
        (lambda: jwt.encode(_claims(exp=int(time.time()) - 120), SECRET), ErrorCode.TOKEN_EXPIRED),
        (lambda: jwt.encode(_claims(nbf=int(time.time()) + 600), SECRET), ErrorCode.INVALID_TOKEN),
        (lambda: jwt.encode(_claims(iss="mallory"), SECRET), ErrorCode.INVALID_TOKEN),
        (lambda: jwt.encode(_claims(aud="other"), SECRET), ErrorCode.INVALID_TOKEN),
        (lambda: jwt.encode(_claims(jti="job-2"), SECRET), ErrorCode.INVALID_TOKEN),
        (lambda: jwt.encode(_claims(exp=None), SECRET), ErrorCode.INVALID_TOKEN),
        (lambda: jwt.encode(_claims(body_sha256=None), SECRET), ErrorCode.INVALID_TOKEN),
        (lambda: jwt.encode(_claims(scope="sdqueue:cancel"), SECRET), ErrorCode.FORBIDDEN),
        (lambda: jwt.encode(_claims(body_sha256=body_sha256(b"other")), SECRET), ErrorCode.BODY_MISMATCH),
        (lambda: "not.a.jwt", ErrorCode.UNAUTHENTICATED),
    ],
    ids=[
        "alg none",
        "unknown kid",
        "kid of another key type",
        "algorithm not allowed",
        "expired",
        "nbf in future",
        "wrong issuer",
        "wrong audience",
        "jti is another job",
        "exp missing",
        "body_sha256 missing",
        "scope lacks generate",
        "body swapped",
        "garbage",
    ],
)
def test_bad_tokens_map_to_contract_codes(make_token: Any, code: ErrorCode, auth: AuthSettings):
    assert _code(make_token(), auth) is code


def test_a_key_verifies_only_its_own_issuers_tokens(auth: AuthSettings):
    # issuer-b has public keys only: the default issuer's HMAC secret must not sign for it.
    assert _code(jwt.encode(_claims(iss="issuer-b"), SECRET, algorithm="HS256"), auth) is ErrorCode.INVALID_TOKEN
    assert _verify(jwt.encode(_claims(iss="issuer-a"), SECRET, algorithm="HS256"), auth).caller.issuer == "issuer-a"


def test_missing_or_non_bearer_header_is_unauthenticated(auth: AuthSettings):
    keys = load_keys(auth)
    for header in (None, "", "Basic dXNlcjpwYXNz"):
        with pytest.raises(SdqueueError) as caught:
            verify_token(header, body=BODY, job_id="job-1", auth=auth, keys=keys)
        assert caught.value.code is ErrorCode.UNAUTHENTICATED


def test_hmac_not_allowed_when_only_public_keys_are_configured(auth: AuthSettings):
    rs_only = auth.model_copy(update={"algorithms": ("RS256",), "hs256_secret": None})

    assert _code(jwt.encode(_claims(), SECRET, algorithm="HS256"), rs_only) is ErrorCode.INVALID_TOKEN
