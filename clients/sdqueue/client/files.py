"""A finished job's images on local disk: where each goes, writing them, and a plain-text summary of what was saved."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sdqueue.client.client import SdqueueClient
from sdqueue.contracts import SucceededEvent


async def save_images(client: SdqueueClient, event: SucceededEvent, *, output: Path | None) -> list[Path]:
    """Download every image of a succeeded job, write each to disk and return their paths, in image order.

    Without `output` the files are `<job_id>.<ext>` (or `<job_id>-<index>.<ext>`) in the working directory; with
    several images, `output` gains an `-<index>` suffix.

    Raises:
        StorageUnavailable: an image could not be downloaded or failed its checksum.
    """
    paths = []
    for image in event.images:
        path = image_path(output, job_id=event.job_id, index=image.index, count=len(event.images), key=image.key)
        data = await client.fetch_image(image)
        await asyncio.to_thread(_write_file, path, data)
        paths.append(path)
    return paths


def image_path(output: Path | None, *, job_id: str, index: int, count: int, key: str) -> Path:
    """The local path of image `index` of `count`, with the extension of its object key."""
    extension = key.rsplit(".", 1)[-1]
    if output is None:
        return Path(f"{job_id}-{index}.{extension}" if count > 1 else f"{job_id}.{extension}")
    return output if count == 1 else output.with_name(f"{output.stem}-{index}{output.suffix}")


def describe_saved_images(event: SucceededEvent, paths: list[Path]) -> str:
    """The job id, then each image's key, URL, absolute path, seed and size, one `label  value` per line."""
    lines = [f"job   {event.job_id}"]
    for image, path in zip(event.images, paths, strict=True):
        lines += [
            f"key   {image.key}",
            f"url   {image.url}",
            f"path  {path.resolve()}",
            f"seed  {image.seed}  {image.width}x{image.height}  {image.size} bytes",
        ]
    return "\n".join(lines)


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
