"""The `sdqueue` command. Client commands stay light; worker, model and dev-stack commands import lazily."""

from __future__ import annotations

import argparse
import asyncio
import base64
import getpass
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sdqueue.client.client import SdqueueClient
from sdqueue.client.jobs import new_job_id
from sdqueue.client.tokens import mint_token
from sdqueue.config import load_settings
from sdqueue.contracts import (
    SCHEMA_VERSION,
    GenerationRequest,
    InitImageData,
    InitImageKey,
    Quota,
    SucceededEvent,
    WorkerHeartbeat,
)
from sdqueue.contracts.errors import SdqueueError, UsageError
from sdqueue.storage import ensure_bucket, make_s3_client

if TYPE_CHECKING:
    from sdqueue.bridge import Accounts

log = logging.getLogger("sdqueue")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sdqueue` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except SdqueueError as exc:
        print(f"sdqueue: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    """The full command tree."""
    parser = argparse.ArgumentParser(prog="sdqueue", description="Stable Diffusion over RabbitMQ and S3.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    _add_generate(commands)
    _add_img2img(commands)
    _add_token(commands)
    _add_service_commands(commands)
    _add_bridge_commands(commands)
    _add_webhook_commands(commands)
    return parser


def _generation_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("-o", "--output", type=Path, help="where to write the image (default: <job_id>.<ext>)")
    options.add_argument("--model", default="default", help="model alias (default: default)")
    # Left unset, these come from the model's defaults on the worker (else the contract's: 512x512, 25, 7.5).
    options.add_argument("--negative", help="negative prompt")
    options.add_argument("--width", type=int)
    options.add_argument("--height", type=int)
    options.add_argument("--steps", type=int)
    options.add_argument("--guidance", type=float, help="guidance scale")
    options.add_argument("--seed", type=int, help="seed (default: derived from the job id)")
    options.add_argument("--num-images", type=int, default=1)
    options.add_argument("--scheduler", help="scheduler name, e.g. euler, dpmpp_2m")
    options.add_argument("--format", dest="output_format", choices=("png", "webp", "jpeg"), default="png")
    options.add_argument("--job-id", help="job id (default: a fresh one)")
    options.add_argument("--subject", default=getpass.getuser(), help="token subject (default: your user name)")
    options.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the result")
    return options


def _add_generate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("generate", parents=[_generation_options()], help="txt2img: prompt to image")
    parser.add_argument("prompt")
    parser.set_defaults(handler=lambda args: asyncio.run(_generate(args, init_path=None)))


def _add_img2img(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("img2img", parents=[_generation_options()], help="img2img: image + prompt to image")
    parser.add_argument("init", type=Path, help="init image (PNG, JPEG or WebP)")
    parser.add_argument("prompt")
    parser.add_argument("--strength", type=float, default=0.75)
    parser.add_argument("--inline", action="store_true", help="send the image in the request instead of the bucket")
    parser.set_defaults(handler=lambda args: asyncio.run(_generate(args, init_path=args.init)))


def _add_token(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("token", help="mint a dev token (HS256) for an exact request body")
    parser.add_argument("body", type=Path, help="file with the exact request body bytes")
    parser.add_argument("--subject", default=getpass.getuser())
    parser.add_argument("--scope", default="sdqueue:generate")
    parser.add_argument("--ttl", type=float, help="seconds until the job must have started")
    parser.add_argument(
        "--quota", type=Quota.model_validate_json, help='quota claim as JSON, e.g. \'{"priority": "low"}\''
    )
    parser.set_defaults(handler=_token)


def _add_service_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    commands.add_parser("worker", help="run the worker").set_defaults(handler=_worker)
    model = commands.add_parser("model", help="model tools").add_subparsers(required=True, metavar="ACTION")
    tiny = model.add_parser("tiny", help="build the offline tiny SD pipeline")
    tiny.add_argument("path", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(handler=_model_tiny)
    storage = commands.add_parser("storage", help="S3 storage").add_subparsers(required=True, metavar="ACTION")
    storage.add_parser("serve", help="run SeaweedFS on loopback with keys enforced").set_defaults(handler=_storage)
    storage.add_parser("ensure-bucket", help="create the configured bucket if missing").set_defaults(
        handler=lambda _: asyncio.run(_ensure_bucket())
    )
    broker = commands.add_parser("broker", help="dev broker").add_subparsers(required=True, metavar="ACTION")
    broker.add_parser("ensure", help="start (or install) a local RabbitMQ if none answers").set_defaults(
        handler=_broker_ensure
    )
    contract = commands.add_parser("contract", help="contract files").add_subparsers(required=True, metavar="ACTION")
    write = contract.add_parser("write", help="regenerate docs/schemas, docs/asyncapi.yaml, docs/configuration.md")
    write.add_argument("--root", type=Path, default=Path())
    write.add_argument("--check", action="store_true", help="only report stale files; exit 1 if any")
    write.set_defaults(handler=_contract_write)
    models = commands.add_parser("models", help="list what the fleet serves, from the workers' heartbeats")
    models.add_argument("--listen", type=float, default=12.0, help="seconds to listen (default: 12)")
    models.set_defaults(handler=lambda args: asyncio.run(_models(args.listen)))
    demo = commands.add_parser("demo", help="run the whole stack on loopback and generate one image")
    demo.add_argument("prompt", nargs="?", default="a dog with a hat")
    demo.set_defaults(handler=_demo)


def _add_bridge_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bridge = commands.add_parser("bridge", help="run the HTTP bridge (FastAPI on uvicorn); `bridge db upgrade`")
    bridge.set_defaults(handler=_bridge)
    database = bridge.add_subparsers(metavar="ACTION").add_parser("db", help="the bridge's database")
    database.add_subparsers(required=True, metavar="ACTION").add_parser(
        "upgrade", help="create the bridge's database or migrate it to this version's schema"
    ).set_defaults(handler=_bridge_db_upgrade)
    users = commands.add_parser("users", help="the bridge's users").add_subparsers(required=True, metavar="ACTION")
    add = users.add_parser("add", help="create a user (asks for the password)")
    add.add_argument("name")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    add.set_defaults(handler=_users_add)
    password = users.add_parser("password", help="change a user's password (asks for it) and retire its tokens")
    password.add_argument("name")
    password.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    password.set_defaults(handler=_users_password)
    remove = users.add_parser("remove", help="remove a user (the name stays taken) and retire its tokens")
    remove.add_argument("name")
    remove.set_defaults(handler=_users_remove)
    users.add_parser("list", help="list the active user names").set_defaults(handler=_users_list)
    imported = users.add_parser("import", help="copy users and their hashes from an earlier version's users.json")
    imported.add_argument("path", type=Path, help="the JSON user store, e.g. .sdqueue/users.json")
    imported.set_defaults(handler=_users_import)


def _add_webhook_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    webhooks = commands.add_parser("webhooks", help="signed completion webhooks").add_subparsers(
        required=True, metavar="ACTION"
    )
    webhooks.add_parser(
        "relay", help="deliver queued webhooks (for workers run with SDQUEUE_WEBHOOKS__RELAY=false)"
    ).set_defaults(handler=_webhooks_relay)


def request_from_args(
    args: argparse.Namespace, *, job_id: str, init: InitImageKey | InitImageData | None
) -> GenerationRequest:
    """Build the wire request from command-line options; options not given are left out of the body."""
    fields = {
        "schema_version": SCHEMA_VERSION,
        "job_id": job_id,
        "mode": "img2img" if init is not None else "txt2img",
        "model": args.model,
        "prompt": args.prompt,
        "negative_prompt": args.negative,
        "width": args.width,
        "height": args.height,
        "steps": args.steps,
        "guidance_scale": args.guidance,
        "seed": args.seed,
        "num_images": args.num_images,
        "scheduler": args.scheduler,
        "strength": args.strength if init is not None else None,
        "init_image": init,
        "output_format": args.output_format,
    }
    return GenerationRequest.model_validate({name: value for name, value in fields.items() if value is not None})


async def _generate(args: argparse.Namespace, *, init_path: Path | None) -> int:
    settings = load_settings()
    job_id = args.job_id or new_job_id()
    async with SdqueueClient(settings, subject=args.subject) as client:
        init = await _init_image(client, init_path, job_id=job_id, inline=getattr(args, "inline", False))
        request = request_from_args(args, job_id=job_id, init=init)
        event = await client.generate(request, timeout_s=args.timeout)
        await save_images(client, event, output=args.output)
    return 0


async def _init_image(
    client: SdqueueClient, path: Path | None, *, job_id: str, inline: bool
) -> InitImageKey | InitImageData | None:
    if path is None:
        return None
    data = await asyncio.to_thread(path.read_bytes)
    if inline:
        return InitImageData(data=base64.b64encode(data).decode("ascii"))
    extension = path.suffix.lstrip(".").lower() or "png"
    return await client.upload_init_image(job_id, data, extension=extension)


async def save_images(client: SdqueueClient, event: SucceededEvent, *, output: Path | None) -> list[Path]:
    """Download every image of a finished job, write it to disk and print where it is."""
    paths = []
    print(f"job   {event.job_id}")
    for image in event.images:
        path = _output_path(output, job_id=event.job_id, index=image.index, count=len(event.images), key=image.key)
        data = await client.fetch_image(image)
        await asyncio.to_thread(_write_file, path, data)
        print(f"key   {image.key}")
        print(f"url   {image.url}")
        print(f"path  {path.resolve()}")
        print(f"seed  {image.seed}  {image.width}x{image.height}  {image.size} bytes")
        paths.append(path)
    return paths


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _output_path(output: Path | None, *, job_id: str, index: int, count: int, key: str) -> Path:
    extension = key.rsplit(".", 1)[-1]
    if output is None:
        return Path(f"{job_id}-{index}.{extension}" if count > 1 else f"{job_id}.{extension}")
    return output if count == 1 else output.with_name(f"{output.stem}-{index}{output.suffix}")


def _token(args: argparse.Namespace) -> int:
    settings = load_settings()
    body = args.body.read_bytes()
    request = GenerationRequest.model_validate_json(body)
    scopes = tuple(args.scope.split())
    print(
        mint_token(
            body,
            job_id=request.job_id,
            subject=args.subject,
            auth=settings.auth,
            scopes=scopes,
            ttl_s=args.ttl,
            quota=args.quota,
        )
    )
    return 0


async def _models(listen_s: float) -> int:
    async with SdqueueClient(load_settings()) as client:
        fleet = await client.fleet(listen_s=listen_s)
    print(format_fleet(fleet))
    return 0 if fleet else 1


def format_fleet(fleet: Sequence[WorkerHeartbeat]) -> str:
    """A table of model aliases (who serves each, where it is loaded), then one of workers."""
    if not fleet:
        return "no worker heard from"
    aliases = sorted({alias for heartbeat in fleet for alias in heartbeat.models})
    models = [["MODEL", "SERVED BY", "LOADED ON"]] + [
        [
            alias,
            ",".join(h.worker for h in fleet if alias in h.models),
            ",".join(h.worker for h in fleet if alias in h.loaded) or "-",
        ]
        for alias in aliases
    ]
    workers = [["WORKER", "STATE", "DEVICE", "IN FLIGHT", "LOADED"]] + [
        [h.worker, h.state, h.device, str(h.in_flight), ",".join(h.loaded) or "-"] for h in fleet
    ]
    return f"{_table(models)}\n\n{_table(workers)}"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _worker(_: argparse.Namespace) -> int:
    from sdqueue.worker.__main__ import main as worker_main

    return worker_main()


def _webhooks_relay(_: argparse.Namespace) -> int:
    # Light imports only (aio-pika, httpx): the relay runs where torch is not installed.
    from sdqueue.worker.logs import setup_logging
    from sdqueue.worker.webhooks import run_relay

    settings = load_settings()
    if settings.webhooks.secret is None:
        print("sdqueue: set SDQUEUE_WEBHOOKS__SECRET (the key webhooks are signed with)", file=sys.stderr)
        return 1
    setup_logging(settings.log_level, log_format=settings.log_format)
    asyncio.run(run_relay(settings))
    return 0


def _model_tiny(args: argparse.Namespace) -> int:
    from sdqueue.worker.generate import build_tiny_model

    print(build_tiny_model(args.path, seed=args.seed))
    return 0


async def _ensure_bucket() -> int:
    s3 = load_settings().s3
    created = await ensure_bucket(make_s3_client(s3), s3=s3)
    print(f"bucket {s3.bucket} {'created' if created else 'exists'}")
    return 0


def _storage(_: argparse.Namespace) -> int:
    from sdqueue.devstack.seaweed import serve_storage

    return serve_storage(load_settings())


def _broker_ensure(_: argparse.Namespace) -> int:
    from sdqueue.devstack.rabbit import ensure_rabbitmq

    ensure_rabbitmq(load_settings().broker.url.get_secret_value())
    return 0


def _contract_write(args: argparse.Namespace) -> int:
    from sdqueue.config.reference import stale_configuration_doc, write_configuration_doc
    from sdqueue.contracts.schema import stale_contract_files, write_contract_files

    if args.check:
        stale = stale_contract_files(args.root) + (
            ["docs/configuration.md"] if stale_configuration_doc(args.root) else []
        )
        for name in stale:
            print(f"stale: {name}")
        return 1 if stale else 0
    for written in [*write_contract_files(args.root), write_configuration_doc(args.root)]:
        print(written)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from sdqueue.devstack.demo import run_demo

    return run_demo(load_settings(), prompt=args.prompt)


def _bridge(_: argparse.Namespace) -> int:
    from sdqueue.bridge import run_bridge

    logging.getLogger().setLevel(logging.INFO)
    return run_bridge(load_settings())


def _bridge_db_upgrade(_: argparse.Namespace) -> int:
    from sdqueue.bridge import DatabaseUnavailable, database_url, head_revision, upgrade_database

    settings = load_settings()
    try:
        upgrade_database(database_url(settings), timeout_s=settings.bridge.database_timeout_s)
    except DatabaseUnavailable as exc:
        print(f"sdqueue: {exc}: {exc.detail}", file=sys.stderr)
        return 1
    print(f"the bridge database is at revision {head_revision()}")
    return 0


def _users_add(args: argparse.Namespace) -> int:
    password = _new_password(args)

    async def add(accounts: Accounts) -> str:
        await accounts.add(args.name, password)
        return f"added {args.name}"

    return asyncio.run(_with_accounts(add))


def _users_password(args: argparse.Namespace) -> int:
    password = _new_password(args)

    async def change(accounts: Accounts) -> str:
        await accounts.set_password(args.name, password)
        return f"changed the password of {args.name}"

    return asyncio.run(_with_accounts(change))


def _new_password(args: argparse.Namespace) -> str:
    """The password from standard input (`--password-stdin`), or asked for twice at the terminal."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    password = getpass.getpass("password: ")
    if password != getpass.getpass("again: "):
        raise UsageError("the passwords differ")
    return password


def _users_remove(args: argparse.Namespace) -> int:
    async def remove(accounts: Accounts) -> str:
        await accounts.remove(args.name)
        return f"removed {args.name}"

    return asyncio.run(_with_accounts(remove))


def _users_list(_: argparse.Namespace) -> int:
    async def names(accounts: Accounts) -> str:
        return "\n".join(await accounts.names())

    return asyncio.run(_with_accounts(names))


def _users_import(args: argparse.Namespace) -> int:
    stored = _read_user_store(args.path)

    async def copy(accounts: Accounts) -> str:
        from sdqueue.bridge import UserExists

        added = []
        for name, password_hash, created_at in stored:
            try:
                await accounts.import_hash(name, password_hash, created_at=created_at)
            except UserExists:
                continue
            added.append(name)
        return f"imported {len(added)} of {len(stored)} users" + (f": {', '.join(added)}" if added else "")

    return asyncio.run(_with_accounts(copy))


def _read_user_store(path: Path) -> list[tuple[str, str, datetime]]:
    """(name, hash, created) of each user in an earlier version's `{"users": {name: {"hash", "created"}}}`."""
    try:
        users = json.loads(path.read_text(encoding="utf-8"))["users"]
        stored = [
            (str(name), str(entry["hash"]), datetime.fromisoformat(entry["created"])) for name, entry in users.items()
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"{path} is not a JSON user store ({type(exc).__name__}: {exc})") from exc
    # The store wrote UTC offsets; a bare time is taken as UTC.
    return sorted(
        (name, password_hash, created.replace(tzinfo=created.tzinfo or UTC)) for name, password_hash, created in stored
    )


async def _with_accounts(action: Callable[[Accounts], Awaitable[str]]) -> int:
    """Open the bridge's database, run one account action, print its outcome; 1 with the reason on refusal."""
    from sdqueue.bridge import AccountError, Accounts, DatabaseUnavailable, SchemaMismatch, database_url, open_database

    settings = load_settings()
    try:
        db = await open_database(database_url(settings), timeout_s=settings.bridge.database_timeout_s)
    except SchemaMismatch as exc:
        print(f"sdqueue: {exc}", file=sys.stderr)
        return 1
    except DatabaseUnavailable as exc:
        print(f"sdqueue: {exc}: {exc.detail}", file=sys.stderr)
        return 1
    accounts = Accounts(db, bridge=settings.bridge)
    try:
        outcome = await action(accounts)
    except AccountError as exc:
        print(f"sdqueue: {exc}", file=sys.stderr)
        return 1
    except DatabaseUnavailable as exc:
        print(f"sdqueue: {exc}: {exc.detail}", file=sys.stderr)
        return 1
    finally:
        accounts.close()
        await db.close()
    if outcome:
        print(outcome)
    return 0
