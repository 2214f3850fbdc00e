"""Read the local stack's resource settings from ``template.yaml``, so the two cannot drift.

Only what the local stack recreates is read: the chunk prefix/suffix parameters, the chunk
queue (visibility timeout, long-poll wait, retention, redrive maxReceiveCount), the trigger
function's S3 event (events and key filter), its timeout and its async retry count.
Parameters resolve to their defaults (``overrides`` replaces them, as ``sam deploy
--parameter-overrides`` would).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from infra.local.resources import StackSpec

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"


class TemplateError(ValueError):
    """template.yaml lacks something the local stack needs."""


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags: ``!Ref X`` -> ``{"Ref": "X"}``, etc."""


def _tag(loader: _CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    return {name: value}


_CfnLoader.add_multi_constructor("!", _tag)


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=_CfnLoader)


def _resolve(value: Any, parameters: Mapping[str, Any]) -> Any:
    if isinstance(value, dict) and set(value) == {"Ref"}:
        name = value["Ref"]
        if name not in parameters:
            raise TemplateError(f"!Ref {name} is not a parameter with a default")
        return parameters[name]
    return value


def _resource(template: Mapping[str, Any], type_: str, predicate=lambda props: True) -> dict:
    found = [r.get("Properties", {}) for r in template.get("Resources", {}).values()
             if r.get("Type") == type_ and predicate(r.get("Properties", {}))]
    if len(found) != 1:
        raise TemplateError(f"expected one {type_} matching, found {len(found)}")
    return found[0]


def spec_from_template(path: Path = TEMPLATE, overrides: Mapping[str, Any] | None = None,
                       **names: str) -> StackSpec:
    """The StackSpec template.yaml describes; ``names`` sets local resource names."""
    template = load_template(path)
    parameters = {name: p["Default"] for name, p in template.get("Parameters", {}).items()
                  if "Default" in p}
    parameters.update(overrides or {})

    def resolve(value: Any) -> Any:
        return _resolve(value, parameters)

    queue = _resource(template, "AWS::SQS::Queue", lambda p: "RedrivePolicy" in p)
    function = _resource(
        template, "AWS::Serverless::Function",
        lambda p: any(e.get("Type") == "S3" for e in p.get("Events", {}).values()))
    [s3_event] = [e["Properties"] for e in function["Events"].values() if e["Type"] == "S3"]
    events = s3_event["Events"]
    rules = {rule["Name"]: resolve(rule["Value"])
             for rule in s3_event.get("Filter", {}).get("S3Key", {}).get("Rules", [])}
    invoke = function.get("EventInvokeConfig", {})
    return StackSpec(
        chunk_prefix=rules.get("prefix", ""),
        chunk_suffix=rules.get("suffix", ""),
        notification_events=tuple(events if isinstance(events, list) else [events]),
        max_receive_count=int(resolve(queue["RedrivePolicy"]["maxReceiveCount"])),
        chunk_visibility_timeout=int(resolve(queue.get("VisibilityTimeout", 30))),
        chunk_receive_wait_seconds=int(resolve(queue.get("ReceiveMessageWaitTimeSeconds", 0))),
        retention_seconds=int(resolve(queue.get("MessageRetentionPeriod", 345600))),
        lambda_max_retry_attempts=int(resolve(invoke.get("MaximumRetryAttempts", 2))),
        lambda_timeout_seconds=int(resolve(function.get("Timeout", 3))),
        lambda_environment=tuple(
            (name, value) for name, value in
            function.get("Environment", {}).get("Variables", {}).items()
            if isinstance(value, str)),
        **names,
    )
