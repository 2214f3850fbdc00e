"""template.yaml, checked offline: cfn-lint, and the SAM transform's wiring.

The SAM translator runs locally with a fixed managed-policy map (no IAM calls). Its output
is the CloudFormation that `sam deploy` would create, so the assertions below are about the
deployed wiring: the S3 notification, the function's permissions, the redrive and the
worker's task role.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from chunk_contract import layout
from tests.conftest import REPO_ROOT

TEMPLATE = REPO_ROOT / "template.yaml"
PARAMETERS = {
    "DataBucketName": "txn-pipeline-data",
    "WorkerImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/worker:1",
    "DatabaseSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf",
    "SubnetIds": ["subnet-0123456789abcdef0"],
    "SecurityGroupIds": ["sg-0123456789abcdef0"],
}


# The worker's environment variable for each S3 layout parameter (chunk_contract.layout).
LAYOUT_PARAMETERS = {
    "CHUNK_PREFIX": "ChunkPrefix", "CHUNK_SUFFIX": "ChunkSuffix", "REFERENCE_KEY": "ReferenceKey",
    "DETECTIONS_PREFIX": "DetectionsPrefix", "QUARANTINE_PREFIX": "QuarantinePrefix",
}


class LocalManagedPolicies:
    """Stands in for samtranslator's ManagedPolicyLoader, which would ask IAM."""

    NAMES = ("AWSLambdaBasicExecutionRole", "AWSXrayWriteOnlyAccess", "AWSXRayDaemonWriteAccess")

    def load(self) -> dict[str, str]:
        return {name: f"arn:aws:iam::aws:policy/{name}" for name in self.NAMES}


@pytest.fixture(scope="module")
def sam_template() -> dict[str, Any]:
    from samtranslator.yaml_helper import yaml_parse

    return yaml_parse(TEMPLATE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def resources(sam_template: dict[str, Any]) -> dict[str, Any]:
    from samtranslator.translator.transform import transform

    packaged = copy.deepcopy(sam_template)
    # What `sam package` does to a local CodeUri before the transform runs.
    packaged["Resources"]["TriggerFunction"]["Properties"]["CodeUri"] = "s3://artifacts/trigger.zip"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_REGION", "us-east-1")
        return transform(packaged, PARAMETERS, LocalManagedPolicies())["Resources"]


def runtime_version(runtime: str) -> tuple[int, ...]:
    """``python3.12`` -> (3, 12): compared as numbers, python3.9 < python3.12."""
    assert runtime.startswith("python"), runtime
    return tuple(int(part) for part in runtime.removeprefix("python").split("."))


def statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for p in role["Properties"]["Policies"] for s in p["PolicyDocument"]["Statement"]]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_cfn_lint_reports_no_errors():
    from cfnlint.api import lint_file

    matches = lint_file(Path(TEMPLATE))
    errors = [str(m) for m in matches if m.rule.id.startswith("E")]
    assert errors == []


def test_bucket_is_private_encrypted_and_expires_old_chunks(resources):
    bucket = resources["DataBucket"]["Properties"]
    assert set(bucket["PublicAccessBlockConfiguration"].values()) == {True}
    [rule] = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms"}
    expiry = [r for r in bucket["LifecycleConfiguration"]["Rules"] if "ExpirationInDays" in r]
    assert expiry == [{"Id": "ExpireOldChunks", "Status": "Enabled",
                       "Prefix": {"Ref": "ChunkPrefix"},
                       "ExpirationInDays": {"Ref": "ChunkRetentionDays"}}]


def test_only_new_chunk_files_notify_the_function(resources):
    [notification] = resources["DataBucket"]["Properties"]["NotificationConfiguration"][
        "LambdaConfigurations"]
    assert notification["Event"] == "s3:ObjectCreated:*"
    assert notification["Function"] == {"Fn::GetAtt": ["TriggerFunction", "Arn"]}
    rules = {r["Name"]: r["Value"] for r in notification["Filter"]["S3Key"]["Rules"]}
    assert rules == {"prefix": {"Ref": "ChunkPrefix"}, "suffix": {"Ref": "ChunkSuffix"}}
    permission = resources["TriggerFunctionChunkCreatedPermission"]["Properties"]
    assert permission["Principal"] == "s3.amazonaws.com"


def test_function_may_only_send_to_the_chunk_queue_and_its_failure_destination(resources):
    function = resources["TriggerFunction"]["Properties"]
    assert runtime_version(function["Runtime"]) >= (3, 12)
    assert function["Handler"] == "lambda_trigger.app.handler"
    env = function["Environment"]["Variables"]
    assert env["QUEUE_URL"] == {"Ref": "ChunkQueue"}
    assert env["BUCKET"] == {"Ref": "DataBucketName"}
    granted = statements(resources["TriggerFunctionRole"])
    assert {a for s in granted for a in as_list(s["Action"])} <= {"sqs:SendMessage",
                                                                  "sqs:SendMessage*"}
    targets = [str(s["Resource"]) for s in granted]
    assert len(targets) == 2
    assert sum("ChunkQueue" in t for t in targets) == 1
    assert sum("TriggerFailureQueue" in t for t in targets) == 1
    assert all(s["Effect"] == "Allow" and "*" not in t for s, t in zip(granted, targets,
                                                                          strict=True))


def test_failed_invocations_go_to_the_failure_queue(resources):
    invoke = resources["TriggerFunctionEventInvokeConfig"]["Properties"]
    assert invoke["DestinationConfig"]["OnFailure"]["Destination"] == {
        "Fn::GetAtt": ["TriggerFailureQueue", "Arn"]}


def test_chunk_queue_long_polls_and_redrives_to_the_dlq(resources):
    queue = resources["ChunkQueue"]["Properties"]
    assert queue["SqsManagedSseEnabled"] is True
    assert queue["ReceiveMessageWaitTimeSeconds"] == 20
    assert queue["VisibilityTimeout"] == {"Ref": "QueueVisibilityTimeoutSeconds"}
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["ChunkDeadLetterQueue", "Arn"]},
        "maxReceiveCount": {"Ref": "MaxReceiveCount"},
    }
    assert resources["ChunkDeadLetterQueue"]["Properties"]["SqsManagedSseEnabled"] is True


def test_task_role_is_limited_to_the_worker_prefixes_and_the_queue(resources):
    granted = {s["Sid"]: s for s in statements(resources["WorkerTaskRole"])}
    prefix = "arn:${AWS::Partition}:s3:::${DataBucketName}/"
    s3_objects = {
        sid: (as_list(granted[sid]["Action"]), [r["Fn::Sub"] for r in granted[sid]["Resource"]])
        for sid in ("ReadChunksAndReference", "WriteDetectionsAndQuarantine")
    }
    assert s3_objects == {
        "ReadChunksAndReference": (["s3:GetObject"],
                                   [prefix + "${ChunkPrefix}*", prefix + "${ReferenceKey}"]),
        "WriteDetectionsAndQuarantine": (["s3:PutObject"],
                                         [prefix + "${DetectionsPrefix}*",
                                          prefix + "${QuarantinePrefix}*"]),
    }
    listing = granted["ListChunkPrefix"]
    assert listing["Action"] == "s3:ListBucket"
    assert listing["Condition"]["StringLike"]["s3:prefix"] == [
        {"Ref": "ChunkPrefix"}, {"Fn::Sub": "${ChunkPrefix}*"}]
    queue = {"Fn::GetAtt": ["ChunkQueue", "Arn"]}
    assert granted["ConsumeChunkQueue"]["Resource"] == queue
    assert sorted(granted["ConsumeChunkQueue"]["Action"]) == [
        "sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:GetQueueAttributes",
        "sqs:ReceiveMessage"]
    assert (granted["BackfillEnqueue"]["Action"], granted["BackfillEnqueue"]["Resource"]) == (
        "sqs:SendMessage", queue)
    assert granted["DeadLetterChunks"]["Resource"] == {
        "Fn::GetAtt": ["ChunkDeadLetterQueue", "Arn"]}
    assert sorted(granted["DeadLetterChunks"]["Action"]) == [
        "sqs:GetQueueAttributes", "sqs:SendMessage"]
    assert set(granted) == {"ReadChunksAndReference", "WriteDetectionsAndQuarantine",
                            "ListChunkPrefix", "ConsumeChunkQueue", "BackfillEnqueue",
                            "DeadLetterChunks"}
    assert "ManagedPolicyArns" not in resources["WorkerTaskRole"]["Properties"]


def test_worker_task_runs_the_image_with_the_secret_and_settings(resources):
    task = resources["WorkerTaskDefinition"]["Properties"]
    assert task["RequiresCompatibilities"] == ["FARGATE"]
    [container] = task["ContainerDefinitions"]
    assert container["Image"] == {"Ref": "WorkerImageUri"}
    assert container["Command"] == ["python", "-m", "spark_detector", "run"]
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert env["SPARK_MASTER"] == "local[2]"
    assert env["QUEUE_URL"] == {"Ref": "ChunkQueue"}
    # The same parameters as the task role's resources, so the two cannot disagree.
    assert {name: env[name] for name in LAYOUT_PARAMETERS} == {
        name: {"Ref": parameter} for name, parameter in LAYOUT_PARAMETERS.items()}
    assert container["Secrets"] == [
        {"Name": "DB_SECRET", "ValueFrom": {"Ref": "DatabaseSecretArn"}}]
    assert container["LogConfiguration"]["Options"]["awslogs-group"] == {"Ref": "WorkerLogGroup"}
    secret_read = statements(resources["WorkerExecutionRole"])
    assert secret_read == [{"Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                            "Resource": {"Ref": "DatabaseSecretArn"}}]
    network = resources["WorkerService"]["Properties"]["NetworkConfiguration"]
    assert network["AwsvpcConfiguration"]["Subnets"] == {"Ref": "SubnetIds"}


def test_alarms_watch_the_dlq_the_oldest_message_and_stream_gaps(resources):
    watched = {
        (r["Properties"]["MetricName"], r["Properties"]["Dimensions"][0]["Value"]["Fn::GetAtt"][0])
        for r in resources.values()
        if r["Type"] == "AWS::CloudWatch::Alarm" and "Dimensions" in r["Properties"]
    }
    assert ("ApproximateNumberOfMessagesVisible", "ChunkDeadLetterQueue") in watched
    assert ("ApproximateAgeOfOldestMessage", "ChunkQueue") in watched
    gap = resources["StreamGapMetricFilter"]["Properties"]
    assert gap["FilterPattern"] == '{ $.message = "stream gap" }'  # worker._note_gap's line
    assert gap["LogGroupName"] == {"Ref": "WorkerLogGroup"}
    assert resources["StreamGapAlarm"]["Properties"]["MetricName"] == "StreamGap"


def test_the_queue_recovers_fast_and_counts_deliveries_only_as_a_backstop(sam_template):
    parameters = sam_template["Parameters"]
    assert parameters["QueueVisibilityTimeoutSeconds"]["Default"] == 60
    assert parameters["MaxReceiveCount"]["Default"] >= 50
    env = {e["Name"]: e["Value"] for e in sam_template["Resources"]["WorkerTaskDefinition"][
        "Properties"]["ContainerDefinitions"][0]["Environment"]}
    assert env["WORKER_VISIBILITY_TIMEOUT_SECONDS"] == {"Ref": "QueueVisibilityTimeoutSeconds"}
    assert env["DLQ_URL"] == {"Ref": "ChunkDeadLetterQueue"}


def test_layout_parameters_default_to_the_shared_contract(sam_template):
    defaults = {name: sam_template["Parameters"][parameter]["Default"]
                for name, parameter in LAYOUT_PARAMETERS.items()}
    assert defaults == {name: getattr(layout, name) for name in LAYOUT_PARAMETERS}


def test_outputs_name_the_bucket_queue_and_function(sam_template):
    outputs = sam_template["Outputs"]
    assert outputs["DataBucketName"]["Value"] == {"Ref": "DataBucket"}
    assert outputs["ChunkQueueUrl"]["Value"] == {"Ref": "ChunkQueue"}
    assert outputs["TriggerFunctionArn"]["Value"] == {"Fn::GetAtt": ["TriggerFunction", "Arn"]}
