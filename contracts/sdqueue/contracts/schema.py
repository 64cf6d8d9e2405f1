"""Render the machine-readable contract from the models: JSON Schema files and an AsyncAPI 3 document."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from sdqueue.contracts.control import CancelCommand
from sdqueue.contracts.errors import ErrorInfo
from sdqueue.contracts.events import (
    JOB_EVENT_ADAPTER,
    TERMINAL_EVENT_ADAPTER,
    CancelledEvent,
    EventType,
    FailedEvent,
    ImageInfo,
    ProgressEvent,
    StartedEvent,
    SucceededEvent,
    Timings,
)
from sdqueue.contracts.fleet import WorkerHeartbeat
from sdqueue.contracts.quota import QUOTA_CLAIM
from sdqueue.contracts.request import JOB_ID_PATTERN, MODEL_ALIAS_PATTERN, SCHEMA_VERSION, GenerationRequest
from sdqueue.contracts.tokens import AUDIENCE, BEARER_PREFIX, SCOPE_ADMIN, SCOPE_CANCEL, SCOPE_GENERATE
from sdqueue.contracts.topology import (
    AUTHORIZATION_HEADER,
    CONTROL_EXCHANGE,
    DEAD_EXCHANGE,
    DEAD_QUEUE,
    DEFAULT_MODEL_ALIAS,
    EVENTS_EXCHANGE,
    REQUESTS_EXCHANGE,
    RETRIES_HEADER,
    event_routing_key,
    request_queue_arguments,
    requests_queue,
    retry_queue,
    retry_queue_arguments,
)

Json = dict[str, Any]

ASYNCAPI_PATH = "docs/asyncapi.yaml"
SCHEMA_DIR = "docs/schemas"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
AMQP_BINDING_VERSION = "0.3.0"
CONTENT_TYPE = "application/json"
EVENT_MODELS: tuple[type[BaseModel], ...] = (StartedEvent, ProgressEvent, SucceededEvent, FailedEvent, CancelledEvent)
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
# What the worker declares for each request queue, with the default delivery limit.
REQUEST_QUEUE_ARGUMENTS: Json = dict(request_queue_arguments())
TOKEN_CLAIMS: dict[str, str] = {
    "iss": "one of the configured issuers; the token must verify with a key of that issuer",
    "aud": f'"{AUDIENCE}"',
    "sub": f"the caller within its issuer: the owner is (`iss`, `sub`); only it (or scope `{SCOPE_ADMIN}`) may "
    "cancel the job, reuse its id or refine its outputs",
    "iat": "required",
    "nbf": "optional (minted tokens carry none); the worker allows `auth.leeway_s` of skew, default 30 s, max 300",
    "exp": "required; the latest moment the job may *start* (later: `token_expired`)",
    "jti": "equals `job_id`",
    "body_sha256": "base64url (no padding) SHA-256 of the exact body bytes",
    "scope": f"space-separated; `{SCOPE_GENERATE}` to generate, `{SCOPE_CANCEL}` to cancel",
    QUOTA_CLAIM: "optional: per-caller caps (`max_pixels`, `max_steps`, `max_images`), `models`, `priority`",
}


def render_contract_files() -> dict[str, str]:
    """Return each generated contract file, by path relative to the repository root, with its exact content."""
    files = {f"{SCHEMA_DIR}/{name}": _dump_json(schema) for name, schema in _json_schemas().items()}
    files[ASYNCAPI_PATH] = _dump_yaml(_asyncapi_document())
    return dict(sorted(files.items()))


def write_contract_files(root: Path) -> list[Path]:
    """Write every generated contract file under `root` and return the paths written."""
    written = []
    for relative, content in render_contract_files().items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written


def stale_contract_files(root: Path) -> list[str]:
    """List the generated contract files under `root` that are missing or differ from what the models render."""
    stale = []
    for relative, content in render_contract_files().items():
        path = root / relative
        if not path.is_file() or path.read_text(encoding="utf-8") != content:
            stale.append(relative)
    return stale


def _dump_json(document: Json) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line text, and no anchors: shared dicts are written out in full."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def _dump_yaml(document: Json) -> str:
    text: str = yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)
    return text


def _json_schemas() -> dict[str, Json]:
    return {
        "cancel-command.json": _standalone(
            CancelCommand.model_json_schema(), stem="cancel-command", title="CancelCommand"
        ),
        "error.json": _standalone(ErrorInfo.model_json_schema(), stem="error", title="ErrorInfo"),
        "event.json": _standalone(
            JOB_EVENT_ADAPTER.json_schema(),
            stem="event",
            title="JobEvent",
            description=f"Any event published to `{EVENTS_EXCHANGE}`; `type` tells which.",
        ),
        "generation-request.json": _standalone(
            GenerationRequest.model_json_schema(), stem="generation-request", title="GenerationRequest"
        ),
        "worker-heartbeat.json": _standalone(
            WorkerHeartbeat.model_json_schema(), stem="worker-heartbeat", title="WorkerHeartbeat"
        ),
        "result-record.json": _standalone(
            TERMINAL_EVENT_ADAPTER.json_schema(),
            stem="result-record",
            title="ResultRecord",
            description="A job's terminal event, stored as `jobs/<job_id>.json` in the bucket.",
        ),
    }


def _standalone(schema: Json, *, stem: str, title: str, description: str | None = None) -> Json:
    document = {"$schema": JSON_SCHEMA_DIALECT, "$id": f"urn:sdqueue:contract:v{SCHEMA_VERSION}:{stem}", **schema}
    document["title"] = title
    if description is not None:
        document["description"] = description
    return document


def _asyncapi_document() -> Json:
    return {
        "asyncapi": "3.0.0",
        "id": "urn:sdqueue",
        "info": _info(),
        "defaultContentType": CONTENT_TYPE,
        "servers": _servers(),
        "channels": _channels(),
        "operations": _operations(),
        "components": _components(),
    }


def _info() -> Json:
    return {
        "title": "sdqueue",
        "version": str(SCHEMA_VERSION),
        "description": (
            "A Stable Diffusion worker driven over RabbitMQ. Clients publish signed generation requests;\n"
            "the worker publishes events about each job and stores images and a result record in S3.\n"
            "The human-readable contract is docs/contract.md; this file is generated from the models.\n"
        ),
        "license": {"name": "MIT"},
    }


def _servers() -> Json:
    return {
        "rabbitmq": {
            "host": "127.0.0.1:5672",
            "protocol": "amqp",
            "protocolVersion": "0.9.1",
            "title": "RabbitMQ",
            "description": "An example local broker; processes read the real one from `SDQUEUE_BROKER__URL`.",
            "security": [_ref("components", "securitySchemes", "brokerCredentials")],
        }
    }


def _ref(*parts: str) -> Json:
    return {"$ref": "#/" + "/".join(parts)}


def _message_refs(channel: str, names: tuple[str, ...]) -> list[Json]:
    return [_ref("channels", channel, "messages", name) for name in names]


def _event_names() -> tuple[str, ...]:
    return tuple(model.__name__ for model in EVENT_MODELS)


def _exchange_binding(name: str, kind: str) -> Json:
    exchange = {"name": name, "type": kind, "durable": True, "autoDelete": False, "vhost": "/"}
    return {"amqp": {"is": "routingKey", "exchange": exchange, "bindingVersion": AMQP_BINDING_VERSION}}


def _queue(name: str, arguments: Json) -> Json:
    """The queue the worker declares behind an exchange; an `x-` extension because a routingKey binding has none."""
    return {
        "name": name,
        "durable": True,
        "exclusive": False,
        "autoDelete": False,
        "vhost": "/",
        "arguments": arguments,
    }


def _channels() -> Json:
    return {
        "requests": _requests_channel(),
        "events": _events_channel(),
        "replies": _replies_channel(),
        "control": _control_channel(),
        "dead": _dead_channel(),
        "retries": _retries_channel(),
    }


def _requests_channel() -> Json:
    return {
        "address": "{alias}",
        "title": "Generation requests",
        "description": (
            f"Publish to the `{REQUESTS_EXCHANGE}` direct exchange with the model alias as routing key,\n"
            "`mandatory` set and publisher confirms on: a request for an alias no worker serves is returned\n"
            f"at once. Each served alias has a quorum queue `{requests_queue('<alias>')}`, declared by the\n"
            "worker only; clients never declare worker queues.\n"
            "\n"
            "Only a caller the worker can verify may speak for a job id: a message whose token is missing, not a\n"
            "JWT, or not signed by a key of its own issuer for this job id, and a verified request for a job id\n"
            "another owner (`iss`, `sub`) has claimed (`jobs/<job_id>.claim`), are dead-lettered with no event and\n"
            "no reply. A verified caller's failures (claims, body, limits, images) get one `failed` event.\n"
            "`init_image.key` must be under `inputs/<job_id>/` of the same job, or `outputs/<job>/` of a job with\n"
            "the same owner; any other key is `forbidden`.\n"
        ),
        "parameters": {"alias": _ref("components", "parameters", "alias")},
        "messages": {"GenerationRequest": _ref("components", "messages", "GenerationRequest")},
        "bindings": _exchange_binding(REQUESTS_EXCHANGE, "direct"),
        "x-sdqueue-queue": _queue(requests_queue("{alias}"), REQUEST_QUEUE_ARGUMENTS),
    }


def _events_channel() -> Json:
    return {
        "address": event_routing_key("{job_id}", "{type}"),
        "title": "Job events",
        "description": (
            f"Every event about every job, on the `{EVENTS_EXCHANGE}` topic exchange. Observers bind their own\n"
            "queues with patterns such as `job.*.succeeded`, `job.<job_id>.*` or `#`.\n"
            "\n"
            "Every event carries the AMQP `user_id` of the worker's own broker user; the broker refuses any other\n"
            "value, so consumers accept an event only when `user_id` is a configured worker user\n"
            "(`broker.worker_users`). Producers have no write permission on this exchange.\n"
        ),
        "parameters": {
            "job_id": _ref("components", "parameters", "job_id"),
            "type": _ref("components", "parameters", "type"),
        },
        "messages": {name: _ref("components", "messages", name) for name in _event_names()},
        "bindings": _exchange_binding(EVENTS_EXCHANGE, "topic"),
    }


def _replies_channel() -> Json:
    return {
        "address": None,
        "title": "Direct replies",
        "description": (
            "If a request carries AMQP `reply_to`, the worker also sends each event of that job to the default\n"
            "exchange with that routing key and the request's `correlation_id`, with the same AMQP `user_id` as\n"
            "on the events channel, and only for a request a verified caller sent.\n"
        ),
        "messages": {name: _ref("components", "messages", name) for name in _event_names()},
        "bindings": {
            "amqp": {
                "is": "routingKey",
                "exchange": {"type": "default", "vhost": "/"},
                "bindingVersion": AMQP_BINDING_VERSION,
            }
        },
    }


def _control_channel() -> Json:
    return {
        "address": None,
        "title": "Control",
        "description": (
            f"Cancel commands on the `{CONTROL_EXCHANGE}` fanout exchange (the routing key is ignored). Each worker\n"
            f"binds its own exclusive queue. Cancelling needs scope `{SCOPE_CANCEL}` and the job's owner (`iss`\n"
            f"and `sub`), or scope `{SCOPE_ADMIN}`. A running job stops at its next step; a job not started yet\n"
            "is cancelled when a worker takes it (workers remember a cancel for an hour, per job and caller, so\n"
            "another caller's cancel never replaces the owner's). Either way it ends `cancelled`, even after the\n"
            "generation budget.\n"
        ),
        "messages": {"CancelCommand": _ref("components", "messages", "CancelCommand")},
        "bindings": _exchange_binding(CONTROL_EXCHANGE, "fanout"),
    }


def _dead_channel() -> Json:
    return {
        "address": "{alias}",
        "title": "Dead letters",
        "description": (
            f"Requests that can never succeed, dead-lettered by the request queues to the `{DEAD_EXCHANGE}` fanout\n"
            f"exchange with their original routing key, and kept in the `{DEAD_QUEUE}` quorum queue for\n"
            "inspection and replay.\n"
        ),
        "parameters": {"alias": _ref("components", "parameters", "alias")},
        "messages": {"GenerationRequest": _ref("components", "messages", "GenerationRequest")},
        "bindings": _exchange_binding(DEAD_EXCHANGE, "fanout"),
        "x-sdqueue-queue": _queue(DEAD_QUEUE, {"x-queue-type": "quorum"}),
    }


def _retries_channel() -> Json:
    return {
        "address": retry_queue("{alias}"),
        "title": "Retries",
        "description": (
            "A transient failure (storage outage, out of memory, an unexpected error) is published by the worker\n"
            "to this quorum queue through the default exchange, as a copy of the request with a per-message TTL\n"
            f"(`expiration`) of its backoff and a `{RETRIES_HEADER}` header; the delivery is then acked, so a\n"
            "backoff holds no prefetch slot. When the TTL ends the broker dead-letters the copy to\n"
            f"`{REQUESTS_EXCHANGE}` under the alias. The attempt count is 1 + retries (the `x-death` count of\n"
            "this queue, or the header) + redeliveries; past `broker.delivery_limit` the job ends in one\n"
            "`delivery_limit_exceeded` event.\n"
        ),
        "parameters": {"alias": _ref("components", "parameters", "alias")},
        "messages": {"GenerationRequest": _ref("components", "messages", "GenerationRequest")},
        "bindings": {
            "amqp": {
                "is": "routingKey",
                "exchange": {"type": "default", "vhost": "/"},
                "bindingVersion": AMQP_BINDING_VERSION,
            }
        },
        "x-sdqueue-queue": _queue(retry_queue("{alias}"), retry_queue_arguments("{alias}")),
    }


def _operations() -> Json:
    return {
        "sendRequest": _send_request(),
        "receiveRequest": _receive_request(),
        "publishEvent": _publish_event(),
        "observeEvents": _observe_events(),
        "inspectDeadLetters": _inspect_dead_letters(),
        "sendCancel": _send_cancel(),
    }


def _send_cancel() -> Json:
    return {
        "action": "send",
        "channel": _ref("channels", "control"),
        "title": "Cancel a job",
        "summary": "The job's owner (or an admin) asks every worker to cancel it.",
        "security": [_ref("components", "securitySchemes", "requestToken")],
        "messages": _message_refs("control", ("CancelCommand",)),
        "bindings": {"amqp": {"mandatory": True, "bindingVersion": AMQP_BINDING_VERSION}},
    }


def _send_request() -> Json:
    return {
        "action": "send",
        "channel": _ref("channels", "requests"),
        "title": "Submit a job",
        "summary": "A client publishes one signed generation request.",
        "security": [_ref("components", "securitySchemes", "requestToken")],
        "messages": _message_refs("requests", ("GenerationRequest",)),
        "bindings": {"amqp": {"deliveryMode": 2, "mandatory": True, "bindingVersion": AMQP_BINDING_VERSION}},
        "reply": _ref("components", "replies", "jobEvents"),
    }


def _receive_request() -> Json:
    return {
        "action": "receive",
        "channel": _ref("channels", "requests"),
        "title": "Run a job",
        "summary": "The worker consumes requests for the aliases it serves.",
        "description": (
            "The worker acks a request only after its terminal event is confirmed and its result record is\n"
            "stored. Permanent failures are rejected without requeue (dead-lettered); transient ones are\n"
            "requeued until the delivery limit.\n"
        ),
        "security": [_ref("components", "securitySchemes", "requestToken")],
        "messages": _message_refs("requests", ("GenerationRequest",)),
        "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}},
        "reply": _ref("components", "replies", "jobEvents"),
    }


def _publish_event() -> Json:
    return {
        "action": "send",
        "channel": _ref("channels", "events"),
        "title": "Publish job events",
        "summary": "The worker publishes each event with publisher confirms.",
        "messages": _message_refs("events", _event_names()),
        "bindings": {"amqp": {"deliveryMode": 2, "bindingVersion": AMQP_BINDING_VERSION}},
    }


def _observe_events() -> Json:
    return {
        "action": "receive",
        "channel": _ref("channels", "events"),
        "title": "Observe job events",
        "summary": "A client or observer follows jobs through a queue bound to the events exchange.",
        "messages": _message_refs("events", _event_names()),
    }


def _inspect_dead_letters() -> Json:
    return {
        "action": "receive",
        "channel": _ref("channels", "dead"),
        "title": "Inspect dead letters",
        "summary": f"An operator reads `{DEAD_QUEUE}` to inspect or replay failed requests.",
        "messages": _message_refs("dead", ("GenerationRequest",)),
        "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}},
    }


def _components() -> Json:
    return {
        "schemas": _component_schemas(),
        "messages": _messages(),
        "parameters": _parameters(),
        "correlationIds": _correlation_ids(),
        "replies": _replies(),
        "replyAddresses": _reply_addresses(),
        "securitySchemes": _security_schemes(),
    }


def _component_schemas() -> Json:
    models: list[type[BaseModel]] = [GenerationRequest, CancelCommand, *EVENT_MODELS, ImageInfo, Timings, ErrorInfo]
    _, top = models_json_schema(
        [(model, "validation") for model in models], ref_template="#/components/schemas/{model}"
    )
    definitions: Json = top["$defs"]
    return dict(sorted(definitions.items()))


def _messages() -> Json:
    messages = {"GenerationRequest": _request_message(), "CancelCommand": _cancel_message()}
    messages.update({model.__name__: _event_message(model) for model in EVENT_MODELS})
    return messages


def _request_message() -> Json:
    return {
        "name": "GenerationRequest",
        "title": "Generation request",
        "summary": GenerationRequest.__doc__,
        "description": (
            "AMQP properties: `content_type=application/json`, `delivery_mode=2`, `message_id=<job_id>`.\n"
            "The body is UTF-8 JSON: the exact bytes whose hash the token's `body_sha256` claim carries.\n"
        ),
        "contentType": CONTENT_TYPE,
        "headers": _request_headers(),
        "payload": _ref("components", "schemas", "GenerationRequest"),
        "correlationId": _ref("components", "correlationIds", "jobId"),
        "examples": [_request_example()],
    }


def _cancel_message() -> Json:
    return {
        "name": "CancelCommand",
        "title": "Cancel command",
        "summary": CancelCommand.__doc__,
        "contentType": CONTENT_TYPE,
        "headers": _request_headers(),
        "payload": _ref("components", "schemas", "CancelCommand"),
        "correlationId": _ref("components", "correlationIds", "jobId"),
    }


def _request_headers() -> Json:
    return {
        "type": "object",
        "required": [AUTHORIZATION_HEADER],
        "properties": {
            AUTHORIZATION_HEADER: {
                "type": "string",
                "description": "`Bearer <JWT>`; see the `requestToken` security scheme for its claims.",
                "pattern": f"^{BEARER_PREFIX}[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+$",
            }
        },
    }


def _request_example() -> Json:
    request = GenerationRequest(
        schema_version=SCHEMA_VERSION,
        job_id="job-0001",
        mode="txt2img",
        prompt="a lighthouse at dusk, oil painting",
        width=768,
        height=512,
        steps=25,
        seed=42,
        metadata={"client": "docs"},
    )
    return {
        "name": "txt2img",
        "summary": "One PNG from a text prompt.",
        "headers": {AUTHORIZATION_HEADER: f"{BEARER_PREFIX}eyJhbGciOiJIUzI1NiJ9.eyJqdGkiOiJqb2ItMDAwMSJ9.c2lnbmF0dXJl"},
        "payload": request.model_dump(mode="json", exclude_defaults=True),
    }


def _event_message(model: type[BaseModel]) -> Json:
    event_type = str(model.model_fields["type"].default)
    return {
        "name": model.__name__,
        "title": f"{event_type} event",
        "summary": model.__doc__,
        "description": (
            f"Routing key `{event_routing_key('<job_id>', event_type)}`; persistent; `message_id` unique per event;\n"
            f"AMQP `type={event_type}`; `correlation_id` is the job id (or the request's, on direct replies);\n"
            "`user_id` is the worker's broker user.\n"
        ),
        "contentType": CONTENT_TYPE,
        "payload": _ref("components", "schemas", model.__name__),
        "correlationId": _ref("components", "correlationIds", "jobId"),
        "bindings": {"amqp": {"messageType": event_type, "bindingVersion": AMQP_BINDING_VERSION}},
    }


def _parameters() -> Json:
    return {
        "alias": {
            "description": f"Model alias, matching `{MODEL_ALIAS_PATTERN}`; one the worker serves.",
            "default": DEFAULT_MODEL_ALIAS,
            "examples": [DEFAULT_MODEL_ALIAS],
        },
        "job_id": {"description": f"The job id, matching `{JOB_ID_PATTERN}`.", "examples": ["job-0001"]},
        "type": {"description": "The event type.", "enum": list(EVENT_TYPES)},
    }


def _correlation_ids() -> Json:
    return {
        "jobId": {
            "description": "The job id: a request's AMQP `message_id` and every event's `correlation_id`.",
            "location": "$message.payload#/job_id",
        }
    }


def _replies() -> Json:
    return {
        "jobEvents": {
            "address": _ref("components", "replyAddresses", "replyTo"),
            "channel": _ref("channels", "replies"),
            "messages": _message_refs("replies", _event_names()),
        }
    }


def _reply_addresses() -> Json:
    return {
        "replyTo": {
            "description": "The request's AMQP `reply_to` property, if any.",
            "location": "$message.header#/reply_to",
        }
    }


def _security_schemes() -> Json:
    return {
        "brokerCredentials": {
            "type": "userPassword",
            "description": "AMQP user and password, part of the broker URL.",
        },
        "requestToken": {
            "type": "httpApiKey",
            "name": AUTHORIZATION_HEADER,
            "in": "header",
            "description": _token_description(),
        },
    }


def _token_description() -> str:
    rows = "".join(f"| `{claim}` | {rule} |\n" for claim, rule in TOKEN_CLAIMS.items())
    return (
        f"A JWT in the `{AUTHORIZATION_HEADER}` AMQP header of each request, as `{BEARER_PREFIX}<JWT>`, bound to\n"
        "that message's body. Algorithms come from the worker's allow-list (HS256 with the issuer's secret;\n"
        "EdDSA, ES256, RS256 with keys picked by `kid` from the issuer's JWKS file); a key verifies only its own\n"
        "issuer's tokens; `none` is never accepted.\n"
        "\n"
        "| claim | rule |\n"
        "| --- | --- |\n"
        f"{rows}"
    )
