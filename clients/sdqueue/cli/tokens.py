"""`sdqueue token`: mint a dev token (HS256) for an exact request body."""

from __future__ import annotations

import argparse
import getpass
from pathlib import Path

from sdqueue.client import mint_token
from sdqueue.config import load_settings
from sdqueue.contracts import GenerationRequest, Quota


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `token`."""
    parser = commands.add_parser("token", help="mint a dev token (HS256) for an exact request body")
    parser.add_argument("body", type=Path, help="file with the exact request body bytes")
    parser.add_argument("--subject", default=getpass.getuser())
    parser.add_argument("--scope", default="sdqueue:generate")
    parser.add_argument("--ttl", type=float, help="seconds until the job must have started")
    parser.add_argument(
        "--quota", type=Quota.model_validate_json, help='quota claim as JSON, e.g. \'{"priority": "low"}\''
    )
    parser.set_defaults(handler=mint_request_token)


def mint_request_token(args: argparse.Namespace) -> int:
    """Print a token for the body in `args.body`, bound to its job id and hash."""
    settings = load_settings()
    body = args.body.read_bytes()
    request = GenerationRequest.model_validate_json(body)
    token = mint_token(
        body,
        job_id=request.job_id,
        subject=args.subject,
        auth=settings.auth,
        scopes=tuple(args.scope.split()),
        ttl_s=args.ttl,
        quota=args.quota,
    )
    print(token)
    return 0
