"""Commands that run or prepare a service: worker, model, storage, broker, webhooks relay and the demo.

Each imports its daemon code inside the handler, so a light install can still run the client commands.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from sdqueue.cli._output import print_error
from sdqueue.config import load_settings
from sdqueue.storage import ensure_bucket, make_s3_client


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `worker`, `model`, `storage`, `broker`, `webhooks` and `demo`."""
    commands.add_parser("worker", help="run the worker").set_defaults(handler=run_worker)
    model = commands.add_parser("model", help="model tools").add_subparsers(required=True, metavar="ACTION")
    tiny = model.add_parser("tiny", help="build an offline tiny SD pipeline (random weights)")
    tiny.add_argument("path", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    # The families `build_tiny_model` builds; named here so that `--help` needs no torch.
    tiny.add_argument("--family", choices=("sd1", "sdxl"), default="sd1", help="model shape (default: sd1)")
    tiny.set_defaults(handler=build_tiny)
    storage = commands.add_parser("storage", help="S3 storage").add_subparsers(required=True, metavar="ACTION")
    storage.add_parser("serve", help="run SeaweedFS on loopback with keys enforced").set_defaults(handler=serve_storage)
    storage.add_parser("ensure-bucket", help="create the configured bucket if missing").set_defaults(
        handler=lambda _: asyncio.run(create_bucket())
    )
    broker = commands.add_parser("broker", help="dev broker").add_subparsers(required=True, metavar="ACTION")
    broker.add_parser("ensure", help="start (or install) a local RabbitMQ if none answers").set_defaults(
        handler=ensure_broker
    )
    webhooks = commands.add_parser("webhooks", help="signed completion webhooks").add_subparsers(
        required=True, metavar="ACTION"
    )
    webhooks.add_parser(
        "relay", help="deliver queued webhooks (for workers run with SDQUEUE_WEBHOOKS__RELAY=false)"
    ).set_defaults(handler=relay_webhooks)
    demo = commands.add_parser("demo", help="run the whole stack on loopback and generate one image")
    demo.add_argument("prompt", nargs="?", default="a dog with a hat")
    demo.set_defaults(handler=run_demo)


def run_worker(_: argparse.Namespace) -> int:
    """Run a worker until it is signalled to stop."""
    from sdqueue.worker.__main__ import main as worker_main

    return worker_main()


def build_tiny(args: argparse.Namespace) -> int:
    """Build the offline tiny pipeline at `args.path` and print where it is."""
    from sdqueue.worker.generate import build_tiny_model

    print(build_tiny_model(args.path, seed=args.seed, family=args.family))
    return 0


async def create_bucket() -> int:
    """Create the configured bucket unless it exists, and say which."""
    s3 = load_settings().s3
    created = await ensure_bucket(make_s3_client(s3), s3=s3)
    print(f"bucket {s3.bucket} {'created' if created else 'exists'}")
    return 0


def serve_storage(_: argparse.Namespace) -> int:
    """Run SeaweedFS on loopback in the foreground."""
    from sdqueue.devstack.seaweed import serve_storage as serve

    return serve(load_settings())


def ensure_broker(_: argparse.Namespace) -> int:
    """Make sure a RabbitMQ answers at the configured URL, starting or installing one if needed."""
    from sdqueue.devstack.rabbit import ensure_rabbitmq

    ensure_rabbitmq(load_settings().broker.url.get_secret_value())
    return 0


def relay_webhooks(_: argparse.Namespace) -> int:
    """Deliver queued webhooks until signalled; 1 when no signing secret is set."""
    # Light imports only (aio-pika, httpx): the relay runs where torch is not installed.
    from sdqueue.worker.logs import setup_logging
    from sdqueue.worker.webhooks import run_relay

    settings = load_settings()
    if settings.webhooks.secret is None:
        return print_error("set SDQUEUE_WEBHOOKS__SECRET (the key webhooks are signed with)")
    setup_logging(settings.log_level, log_format=settings.log_format)
    asyncio.run(run_relay(settings))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """Run the whole stack on loopback and send one request through it."""
    from sdqueue.devstack.demo import run_demo as demo

    return demo(load_settings(), prompt=args.prompt)
