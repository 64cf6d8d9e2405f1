"""Per-caller quotas from the token's `quota` claim, and fair intake's bookkeeping (no broker needed)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import SecretStr

from sdqueue.client.tokens import mint_token
from sdqueue.config import AuthSettings, FairnessSettings, LimitSettings
from sdqueue.contracts import ErrorCode, Quota
from sdqueue.contracts.errors import SdqueueError
from sdqueue.worker.fairness import RANK_HIGH, RANK_MAIN, RANK_OVERFLOW, FairIntake, batch_rank
from sdqueue.worker.validate import parse_job
from sdqueue.worker.verify import Caller, load_keys, verify_token
from tests.e2e.requests import claims, hs256

SECRET = "a-shared-secret-of-at-least-32-bytes!!"
AUTH = AuthSettings(hs256_secret=SecretStr(SECRET))
LIMITS = LimitSettings(max_pixels=512 * 512, max_steps=50, max_images=4)
BODY = json.dumps({"schema_version": 1, "job_id": "job-1", "mode": "txt2img", "prompt": "a cat"}).encode()


def _token(quota: object) -> str:
    """A valid token for BODY, with a `quota` claim unless it is None (the shared helper drops None claims)."""
    return hs256(claims(BODY, job_id="job-1", auth=AUTH, sub="alice", quota=quota), AUTH)


def _verify(quota: object) -> Any:
    return verify_token(f"Bearer {_token(quota)}", body=BODY, job_id="job-1", auth=AUTH, keys=load_keys(AUTH))


def _parse(quota: Quota, **fields: Any) -> Any:
    body = {"schema_version": 1, "job_id": "job-1", "mode": "txt2img", "prompt": "a cat", **fields}
    return parse_job(
        json.dumps(body).encode(),
        job_id="job-1",
        limits=LIMITS,
        served_models={"default", "xl"},
        schedulers={"euler"},
        quota=quota,
    )


def test_a_token_without_quota_is_unlimited():
    assert _verify(None).quota == Quota()


def test_the_quota_claim_is_read():
    claims = _verify({"max_steps": 10, "models": ["default"], "priority": "low"})

    assert claims.quota == Quota(max_steps=10, models=("default",), priority="low")


@pytest.mark.parametrize("quota", [{"max_steps": "many"}, {"priority": "urgent"}, {"unknown": 1}, ["max_steps"]])
def test_a_malformed_quota_is_an_invalid_token(quota: object):
    with pytest.raises(SdqueueError) as caught:
        _verify(quota)

    assert caught.value.code == ErrorCode.INVALID_TOKEN


@pytest.mark.parametrize(
    ("quota", "fields"),
    [
        (Quota(max_steps=10), {"steps": 11}),
        (Quota(max_pixels=64 * 64), {"width": 128, "height": 64}),
        (Quota(max_images=1), {"num_images": 2}),
    ],
)
def test_a_quota_lowers_the_workers_caps(quota: Quota, fields: dict[str, int]):
    with pytest.raises(SdqueueError) as caught:
        _parse(quota, **fields)

    assert caught.value.code == ErrorCode.LIMITS_EXCEEDED


def test_a_quota_never_raises_the_workers_caps():
    with pytest.raises(SdqueueError) as caught:
        _parse(Quota(max_steps=150), steps=51)

    assert caught.value.code == ErrorCode.LIMITS_EXCEEDED
    assert _parse(Quota(max_steps=150), steps=50).steps == 50


def test_a_model_outside_the_quota_is_forbidden():
    with pytest.raises(SdqueueError) as caught:
        _parse(Quota(models=("default",)), model="xl")

    assert caught.value.code == ErrorCode.FORBIDDEN
    assert _parse(Quota(models=("default",)), model="default").model == "default"


def test_intake_holds_a_callers_share_and_frees_it_on_settle():
    intake = FairIntake(FairnessSettings(max_per_caller=2))

    assert [intake.admit(Caller("sdqueue", "flood"), "normal") for _ in range(3)] == [True, True, False]
    assert intake.admit(Caller("sdqueue", "light"), "normal")
    intake.release(Caller("sdqueue", "flood"))
    assert intake.admit(Caller("sdqueue", "flood"), "normal")
    assert intake.held(Caller("sdqueue", "flood")) == 2


def test_priority_overrides_the_share():
    intake = FairIntake(FairnessSettings(max_per_caller=1))

    assert not intake.admit(Caller("sdqueue", "batch-job"), "low")
    assert [intake.admit(Caller("sdqueue", "vip"), "high") for _ in range(3)] == [True, True, True]


def test_batch_rank_orders_high_then_main_then_overflow():
    assert batch_rank("main", "high") == batch_rank("overflow", "high") == RANK_HIGH
    assert batch_rank("main", "normal") == RANK_MAIN
    assert batch_rank("overflow", "normal") == batch_rank("main", "low") == RANK_OVERFLOW
    assert RANK_HIGH > RANK_MAIN > RANK_OVERFLOW


def test_the_client_mints_the_quota_claim():
    token = mint_token(BODY, job_id="job-1", subject="alice", auth=AUTH, quota=Quota(max_images=1, priority="high"))
    claims = verify_token(f"Bearer {token}", body=BODY, job_id="job-1", auth=AUTH, keys=load_keys(AUTH))

    assert claims.quota == Quota(max_images=1, priority="high")
