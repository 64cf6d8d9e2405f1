"""The marker writer against the real SeaweedFS: markers wait for a pause in accepts, but never past their deadline."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sdqueue.bridge._markers import JobMarker, MarkerWriter, get_marker, minted_at_s, new_bridge_job_id
from sdqueue.config import Settings

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

WRITE_EVERY_S = 0.1


def _marker(owner: str) -> JobMarker:
    return JobMarker(
        job_id=new_bridge_job_id(),
        owner=owner,
        mode="txt2img",
        prompt="a kite",
        model="default",
        width=64,
        height=64,
        steps=2,
        created_at=datetime.now(UTC),
    )


async def _keep_writing(writer: MarkerWriter, *, owner: str, for_s: float) -> JobMarker:
    """Write a marker every WRITE_EVERY_S for `for_s`, like a stream of accepts; returns the last one."""
    last = _marker(owner)
    for _ in range(round(for_s / WRITE_EVERY_S)):
        await asyncio.sleep(WRITE_EVERY_S)
        last = _marker(owner)
        writer.write(last)
    return last


async def _stored(marker: JobMarker, *, settings: Settings, client: S3Client) -> JobMarker | None:
    return await get_marker(marker.owner, marker.job_id, s3=settings.s3, client=client)


async def test_markers_wait_for_a_pause_in_accepts_then_land(stack_settings: Settings, s3_client: S3Client):
    owner = f"quiet-{secrets.token_hex(3)}"
    writer = MarkerWriter(s3=stack_settings.s3, client=s3_client, quiet_s=1.0, max_delay_s=30.0)
    first = _marker(owner)
    writer.write(first)

    await _keep_writing(writer, owner=owner, for_s=1.5)

    assert await _stored(first, settings=stack_settings, client=s3_client) is None, "stored during the burst"
    assert writer.pending(owner, first.job_id) == first
    await writer.drain(timeout_s=20.0)
    assert await _stored(first, settings=stack_settings, client=s3_client) == first
    assert writer.pending(owner, first.job_id) is None
    assert writer.pending_for(owner) == []


async def test_steady_accepts_hold_a_marker_back_no_longer_than_its_deadline(
    stack_settings: Settings, s3_client: S3Client
):
    owner = f"steady-{secrets.token_hex(3)}"
    writer = MarkerWriter(s3=stack_settings.s3, client=s3_client, quiet_s=60.0, max_delay_s=0.3)
    first = _marker(owner)
    writer.write(first)

    last = await _keep_writing(writer, owner=owner, for_s=3.0)

    assert await _stored(first, settings=stack_settings, client=s3_client) == first
    assert writer.pending(owner, last.job_id) == last, "the newest marker is past its deadline already"
    await writer.drain(timeout_s=20.0)
    assert writer.pending_for(owner) == []


def test_a_bridge_job_id_says_when_it_was_minted():
    assert minted_at_s(new_bridge_job_id(now_s=1_800_000_000.123)) == 1_800_000_000.123
    for other in ["nope", "0123456789abcdef0123456789abcdef", "zzzzzzzzzzz-abc", "0123456789-abc"]:
        assert minted_at_s(other) is None
