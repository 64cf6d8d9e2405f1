"""The request's `adapters`: what the contract accepts, and each malformed form it refuses."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from sdqueue.config import LimitSettings
from sdqueue.config.limits import limit_violation
from sdqueue.contracts import MAX_ADAPTERS, AdapterRef, GenerationRequest, SucceededEvent, Timings
from sdqueue.contracts.adapters import applied

SHA = "ab" * 32


def lora(**fields: Any) -> dict[str, Any]:
    return {"key": "adapters/style.safetensors", "sha256": SHA, **fields}


def embedding(**fields: Any) -> dict[str, Any]:
    return {"name": "fox-words", "sha256": SHA, "kind": "embedding", "token": "<fox>", **fields}


def parse(*adapters: dict[str, Any]) -> GenerationRequest:
    body = {"schema_version": 1, "job_id": "job-1", "mode": "txt2img", "prompt": "a fox", "adapters": list(adapters)}
    return GenerationRequest.model_validate_json(json.dumps(body))


def test_a_request_has_no_adapters_by_default():
    body = {"schema_version": 1, "job_id": "job-1", "mode": "txt2img", "prompt": "a fox"}

    assert GenerationRequest.model_validate_json(json.dumps(body)).adapters == []


def test_a_lora_by_key_and_an_embedding_by_name_parse_with_their_defaults():
    request = parse(lora(), embedding())

    first, second = request.adapters
    assert (first.kind, first.scale, first.token, first.source) == ("lora", 1.0, None, "adapters/style.safetensors")
    assert (second.kind, second.token, second.source) == ("embedding", "<fox>", "name:fox-words")


@pytest.mark.parametrize(
    "adapter",
    [
        pytest.param(lora(key="inputs/job-1/style.safetensors"), id="key outside adapters/"),
        pytest.param(lora(key="adapters/../jobs/x.safetensors"), id="dot-dot segment"),
        pytest.param(lora(key="adapters/.hidden.safetensors"), id="leading dot"),
        pytest.param(lora(key="adapters//style.safetensors"), id="empty segment"),
        pytest.param(lora(key="/adapters/style.safetensors"), id="leading slash"),
        pytest.param(lora(key="adapters/style.ckpt"), id="pickle suffix"),
        pytest.param(lora(key="adapters/style.safetensors\n"), id="trailing newline"),
        pytest.param(lora(key="adapters/a/b/c/d/e.safetensors"), id="too deep"),
        pytest.param(lora(name="style"), id="key and name"),
        pytest.param({"sha256": SHA}, id="neither key nor name"),
        pytest.param(lora(name=None, key=None), id="both null"),
        pytest.param(lora(sha256="AB" * 32), id="upper-case hash"),
        pytest.param(lora(sha256="ab" * 31), id="short hash"),
        pytest.param(lora(sha256=None), id="no hash"),
        pytest.param(lora(scale=4.5), id="scale over 4"),
        pytest.param(lora(scale=-4.01), id="scale under -4"),
        pytest.param(lora(scale="1"), id="scale as a string"),
        pytest.param(lora(kind="hypernetwork"), id="unknown kind"),
        pytest.param(lora(token="<fox>"), id="token on a lora"),
        pytest.param(embedding(token=None), id="embedding without token"),
        pytest.param(embedding(token="fox"), id="token without brackets"),
        pytest.param(embedding(token="<Fox>"), id="upper-case token"),
        pytest.param(embedding(name="../x"), id="unsafe name"),
        pytest.param(lora(extra=1), id="unknown field"),
    ],
)
def test_a_malformed_adapter_is_refused(adapter):
    with pytest.raises(ValidationError):
        parse(adapter)


def test_more_adapters_than_the_contract_allows_are_refused():
    adapters = [lora(key=f"adapters/{index}.safetensors") for index in range(MAX_ADAPTERS + 1)]

    with pytest.raises(ValidationError, match="at most 8"):
        parse(*adapters)


def test_an_adapter_listed_twice_is_refused():
    with pytest.raises(ValidationError, match="listed twice"):
        parse(lora(), lora(scale=0.5))


def test_two_embeddings_with_one_token_are_refused():
    with pytest.raises(ValidationError, match="same token"):
        parse(embedding(), embedding(name="other"))


def test_the_worker_caps_the_number_of_adapters():
    request = parse(*(lora(key=f"adapters/{index}.safetensors") for index in range(3)))

    assert limit_violation(request, limits=LimitSettings(max_adapters=3)) is None
    assert limit_violation(request, limits=LimitSettings(max_adapters=2)) == "3 adapters is over the cap of 2"


def test_the_succeeded_event_reports_the_applied_adapters():
    request = parse(lora(scale=0.5), embedding())
    event = SucceededEvent(
        job_id="job-1",
        model="default",
        worker="w",
        attempt=1,
        images=[],
        timings=Timings(),
        adapters=[applied(adapter) for adapter in request.adapters],
    )

    reported = json.loads(event.model_dump_json())["adapters"]
    assert reported[0] == {
        "key": "adapters/style.safetensors",
        "name": None,
        "sha256": SHA,
        "kind": "lora",
        "scale": 0.5,
        "token": None,
    }
    assert reported[1]["name"] == "fox-words"
    assert reported[1]["token"] == "<fox>"


def test_the_schema_states_the_adapter_rules():
    schema = AdapterRef.model_json_schema()

    assert schema["properties"]["key"]["anyOf"][0]["pattern"].startswith("^adapters/")
    assert schema["allOf"][1]["then"] == {"required": ["token"]}
