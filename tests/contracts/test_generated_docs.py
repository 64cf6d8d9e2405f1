"""The committed machine-readable contract and configuration reference match what the models render."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from sdqueue.config.reference import CONFIGURATION_DOC_PATH, stale_configuration_doc
from sdqueue.contracts.schema import ASYNCAPI_PATH, SCHEMA_DIR, render_contract_files, stale_contract_files

REPO_ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "regenerate them with `sdqueue contract write` and commit the result"
SCHEMA_TITLES = {
    "error.json": "ErrorInfo",
    "event.json": "JobEvent",
    "generation-request.json": "GenerationRequest",
    "result-record.json": "ResultRecord",
}


def test_contract_files_are_up_to_date():
    stale = stale_contract_files(REPO_ROOT)

    assert stale == [], f"generated contract files are stale: {', '.join(stale)}; {REGENERATE}"


def test_configuration_doc_is_up_to_date():
    assert not stale_configuration_doc(REPO_ROOT), f"{CONFIGURATION_DOC_PATH} is stale; {REGENERATE}"


def test_rendering_is_deterministic():
    assert render_contract_files() == render_contract_files()


def test_every_file_ends_with_one_newline():
    for relative, content in render_contract_files().items():
        assert content.endswith("\n"), relative
        assert not content.endswith("\n\n"), relative


def test_asyncapi_document_shape():
    document = yaml.safe_load((REPO_ROOT / ASYNCAPI_PATH).read_text(encoding="utf-8"))

    assert document["asyncapi"] == "3.0.0"
    assert {"requests", "events", "control", "dead"} <= set(document["channels"])
    assert document["channels"]["requests"]["bindings"]["amqp"]["exchange"]["name"] == "sdqueue.requests"
    assert {"sendRequest", "receiveRequest", "publishEvent", "observeEvents"} <= set(document["operations"])


def test_asyncapi_local_references_resolve():
    document = yaml.safe_load((REPO_ROOT / ASYNCAPI_PATH).read_text(encoding="utf-8"))

    for reference in _references(document):
        node = document
        for part in reference.removeprefix("#/").split("/"):
            assert isinstance(node, dict), reference
            assert part in node, f"unresolved {reference}"
            node = node[part]


def test_asyncapi_channel_parameters_match_addresses():
    document = yaml.safe_load((REPO_ROOT / ASYNCAPI_PATH).read_text(encoding="utf-8"))

    for name, channel in document["channels"].items():
        address = channel.get("address") or ""
        named = {part.split("}")[0] for part in address.split("{")[1:]}
        assert named == set(channel.get("parameters", {})), name


def test_schema_files_are_json_with_the_expected_titles():
    for file_name, title in SCHEMA_TITLES.items():
        schema = json.loads((REPO_ROOT / SCHEMA_DIR / file_name).read_text(encoding="utf-8"))

        assert schema["title"] == title
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"].endswith(file_name.removesuffix(".json"))


def _references(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _references(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _references(value)]
    return []
