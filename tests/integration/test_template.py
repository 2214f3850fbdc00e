"""template.yaml, checked offline: cfn-lint (informational checks too), and the SAM
transform's wiring.

The SAM translator runs locally with a fixed managed-policy map (no IAM calls). Its output
is the CloudFormation that `sam deploy` would create, so the assertions below are about the
deployed wiring: the S3 notification, the function's permissions, the redrive and the
worker's task role.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from chunk_contract import layout
from spark_detector.worker import emf
from tests.conftest import REPO_ROOT

TEMPLATE = REPO_ROOT / "template.yaml"
PARAMETERS = {
    "DataBucketName": "txn-pipeline-data",
    "WorkerImageTag": "0123456789ab",
    "VpcId": "vpc-0123456789abcdef0",
    "SubnetIds": ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"],
}
SECRET_ARN = {"Fn::If": ["CreateRdsInstance", {"Ref": "DatabaseInstanceSecretAttachment"},
                         {"Fn::If": ["CreateAuroraCluster",
                                     {"Ref": "DatabaseClusterSecretAttachment"},
                                     {"Ref": "DatabaseSecretArn"}]}]}
ALARM_ACTIONS = {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], [{"Ref": "AlarmTopic"}]]}


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


def test_cfn_lint_reports_nothing_not_even_informational_checks():
    from cfnlint.api import ManualArgs, lint_file

    matches = lint_file(Path(TEMPLATE), config=ManualArgs(include_checks=["I"]))
    assert [str(m) for m in matches] == []


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
    assert runtime_version(function["Runtime"]) == (3, 11)  # the lock's, the image's
    [layer] = function["Layers"]
    assert "AWSLambdaPowertoolsPythonV3-python311-x86_64" in layer["Fn::Sub"]
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
    repository = "${WorkerRepository.RepositoryUri}"
    assert container["Image"] == {"Fn::If": ["HasImageUri", {"Ref": "WorkerImageUri"}, {
        "Fn::If": ["HasImageTag", {"Fn::Sub": repository + ":${WorkerImageTag}"},
                   {"Fn::Sub": repository + ":no-image-yet"}]}]}
    assert container["Command"] == ["python", "-m", "spark_detector", "run"]
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert env["SPARK_MASTER"] == {"Fn::FindInMap": ["SparkMasterByCpu", {"Ref": "WorkerCpu"},
                                                     "Master"]}
    assert env["WORKER_METRICS_NAMESPACE"] == {"Fn::Sub": "${AWS::StackName}/Worker"}
    assert env["QUEUE_URL"] == {"Ref": "ChunkQueue"}
    # The same parameters as the task role's resources, so the two cannot disagree.
    assert {name: env[name] for name in LAYOUT_PARAMETERS} == {
        name: {"Ref": parameter} for name, parameter in LAYOUT_PARAMETERS.items()}
    assert container["Secrets"] == [{"Name": "DB_SECRET", "ValueFrom": SECRET_ARN}]
    assert container["LogConfiguration"]["Options"]["awslogs-group"] == {"Ref": "WorkerLogGroup"}
    secret_read = statements(resources["WorkerExecutionRole"])
    assert secret_read == [{"Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                            "Resource": SECRET_ARN}]
    network = resources["WorkerService"]["Properties"]["NetworkConfiguration"]
    assert network["AwsvpcConfiguration"]["Subnets"] == {"Ref": "SubnetIds"}
    groups = network["AwsvpcConfiguration"]["SecurityGroups"]
    assert groups["Fn::If"][0] == "HasExtraSecurityGroups"
    assert groups["Fn::If"][2] == [{"Ref": "WorkerSecurityGroup"}]
    # no image yet (first deploy): the service runs no task
    assert resources["WorkerService"]["Properties"]["DesiredCount"] == {
        "Fn::If": ["HasWorkerImage", {"Ref": "WorkerDesiredCount"}, 0]}


def test_spark_master_follows_the_task_cpu(sam_template):
    parameter = sam_template["Parameters"]["WorkerCpu"]
    masters = sam_template["Mappings"]["SparkMasterByCpu"]
    assert set(masters) == set(parameter["AllowedValues"])
    assert {cpu: entry["Master"] for cpu, entry in masters.items()} == {
        cpu: f"local[{int(cpu) // 1024}]" for cpu in parameter["AllowedValues"]}


def test_the_image_repository_keeps_its_tags_and_scans_pushes(resources):
    repository = resources["WorkerRepository"]
    assert repository["DeletionPolicy"] == repository["UpdateReplacePolicy"] == "Retain"
    properties = repository["Properties"]
    assert properties["ImageTagMutability"] == "IMMUTABLE"
    assert properties["ImageScanningConfiguration"] == {"ScanOnPush": True}
    rules = json.loads(properties["LifecyclePolicy"]["LifecyclePolicyText"])["rules"]
    assert rules[0]["selection"]["countNumber"] >= 10


def test_without_a_secret_the_stack_creates_a_private_encrypted_postgresql(resources,
                                                                         sam_template):
    assert sam_template["Conditions"]["CreateDatabase"] == {
        "Fn::Equals": [{"Ref": "DatabaseSecretArn"}, ""]}
    assert sam_template["Parameters"]["DatabaseSecretArn"]["Default"] == ""
    secret = resources["DatabaseSecret"]
    template = json.loads(secret["Properties"]["GenerateSecretString"]["SecretStringTemplate"][
        "Fn::Sub"].replace("${DatabaseName}", "pipeline"))
    assert template == {"username": "pipeline", "dbname": "pipeline"}
    for name, condition in (("DatabaseInstance", "CreateRdsInstance"),
                            ("DatabaseCluster", "CreateAuroraCluster")):
        database = resources[name]
        assert database["Condition"] == condition
        assert database["DeletionPolicy"] == database["UpdateReplacePolicy"] == "Snapshot"
        properties = database["Properties"]
        assert properties["StorageEncrypted"] is True
        assert properties["DeletionProtection"] is True
        assert properties.get("PubliclyAccessible", False) is False
        assert properties["EngineVersion"] == {"Ref": "DatabaseEngineVersion"}
    cluster = resources["DatabaseCluster"]["Properties"]
    assert cluster["Engine"] == "aurora-postgresql"
    assert cluster["ServerlessV2ScalingConfiguration"]["MaxCapacity"] == {
        "Ref": "AuroraMaxCapacity"}
    assert resources["DatabaseClusterInstance"]["Properties"]["DBInstanceClass"] == (
        "db.serverless")
    # the secret gets the server's host and port once it exists: the RDS secret format
    for attachment, target in (("DatabaseInstanceSecretAttachment", "DatabaseInstance"),
                               ("DatabaseClusterSecretAttachment", "DatabaseCluster")):
        properties = resources[attachment]["Properties"]
        assert properties["SecretId"] == {"Ref": "DatabaseSecret"}
        assert properties["TargetId"] == {"Ref": target}
    # only the worker's tasks reach it, on PostgreSQL's port
    [ingress] = resources["DatabaseSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert (ingress["FromPort"], ingress["ToPort"], ingress["SourceSecurityGroupId"]) == (
        5432, 5432, {"Ref": "WorkerSecurityGroup"})


def test_queues_and_log_groups_outlive_the_stack(resources):
    for name in ("ChunkQueue", "ChunkDeadLetterQueue", "TriggerFailureQueue",
                 "TriggerLogGroup", "WorkerLogGroup", "DataBucket"):
        assert resources[name]["DeletionPolicy"] == "Retain", name
        assert resources[name]["UpdateReplacePolicy"] == "Retain", name


def test_the_bucket_is_versioned_and_old_versions_expire(resources):
    bucket = resources["DataBucket"]["Properties"]
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    rules = {r["Id"]: r for r in bucket["LifecycleConfiguration"]["Rules"]}
    assert rules["ExpireNoncurrentVersions"]["NoncurrentVersionExpiration"] == {
        "NoncurrentDays": {"Ref": "NoncurrentVersionRetentionDays"}}


def test_every_alarm_notifies_the_alarm_topic(resources):
    alarms = [r for r in resources.values() if r["Type"] == "AWS::CloudWatch::Alarm"]
    assert len(alarms) == 9
    for alarm in alarms:
        assert alarm["Properties"]["AlarmActions"] == ALARM_ACTIONS


def test_alarms_watch_running_tasks_the_trigger_and_the_workers_failures(resources):
    missing = resources["WorkerTasksBelowDesiredAlarm"]["Properties"]
    metrics = {m["Id"]: m for m in missing["Metrics"]}
    assert metrics["missing"]["Expression"] == "desired - running"
    for metric_id, name in (("desired", "DesiredTaskCount"), ("running", "RunningTaskCount")):
        metric = metrics[metric_id]["MetricStat"]["Metric"]
        assert (metric["Namespace"], metric["MetricName"]) == ("ECS/ContainerInsights", name)
        assert {d["Name"]: d["Value"] for d in metric["Dimensions"]} == {
            "ClusterName": {"Ref": "WorkerCluster"},
            "ServiceName": {"Fn::GetAtt": ["WorkerService", "Name"]}}
    assert (missing["ComparisonOperator"], missing["Threshold"]) == ("GreaterThanThreshold", 0)
    for alarm, metric in (("TriggerErrorsAlarm", "Errors"), ("TriggerThrottlesAlarm",
                                                              "Throttles")):
        properties = resources[alarm]["Properties"]
        assert (properties["Namespace"], properties["MetricName"]) == ("AWS/Lambda", metric)
        assert properties["Dimensions"] == [{"Name": "FunctionName",
                                             "Value": {"Ref": "TriggerFunction"}}]
    failures = resources["ChunkFailuresAlarm"]["Properties"]
    assert failures["Namespace"] == {"Fn::Sub": "${AWS::StackName}/Worker"}
    assert failures["MetricName"] in emf.BATCH_METRICS  # a figure the worker publishes


def dashboard(resources: dict[str, Any]) -> dict[str, Any]:
    """The dashboard's body, its substitutions filled in with made-up values."""
    body, names = resources["PipelineDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    filled = re.sub(r"\$\{([^}]+)\}", lambda m: "stack/Worker" if m.group(1) == "Namespace"
                    else f"<{m.group(1)}>", body)
    assert set(names) == {"Namespace", "ServiceName"}
    return json.loads(filled)


def test_the_dashboard_shows_every_figure_the_operations_guide_names(resources):
    widgets = dashboard(resources)["widgets"]
    metrics = [m for w in widgets for m in w["properties"]["metrics"]]
    named = {part for metric in metrics for part in metric if isinstance(part, str)}
    for figure in ("ApproximateNumberOfMessagesVisible", "ApproximateAgeOfOldestMessage",
                   "<ChunkDeadLetterQueue.QueueName>", "rows_good", "apply_ms", "spark_ms",
                   "detections", "failures", "waiting_s", "StreamGap", "MemoryUtilized"):
        assert figure in named, figure
    # every figure of the worker's namespace is one the worker publishes
    published = set(emf.BATCH_METRICS) | set(emf.GAP_METRICS) | {"StreamGap"}
    worker_metrics = {m[1] for m in metrics if m and m[0] in ("stack/Worker", ".")
                      and len(m) > 1 and isinstance(m[1], str) and m[1][0].islower()}
    assert worker_metrics <= published


def test_every_parameter_is_documented(sam_template):
    documented = (REPO_ROOT / "docs" / "deploy.md").read_text()
    for name in sam_template["Parameters"]:
        assert f"`{name}`" in documented, name


def test_alarms_watch_the_dlq_the_oldest_message_and_stream_gaps(resources):
    watched = {
        (r["Properties"]["MetricName"], r["Properties"]["Dimensions"][0]["Value"]["Fn::GetAtt"][0])
        for r in resources.values()
        if r["Type"] == "AWS::CloudWatch::Alarm" and "Dimensions" in r["Properties"]
        and "Fn::GetAtt" in r["Properties"]["Dimensions"][0]["Value"]
    }
    assert ("ApproximateNumberOfMessagesVisible", "ChunkDeadLetterQueue") in watched
    assert ("ApproximateAgeOfOldestMessage", "ChunkQueue") in watched
    gap = resources["StreamGapMetricFilter"]["Properties"]
    assert gap["FilterPattern"] == '{ $.message = "stream gap" }'  # worker._note_gap's line
    assert gap["LogGroupName"] == {"Ref": "WorkerLogGroup"}
    assert resources["StreamGapAlarm"]["Properties"]["MetricName"] == "StreamGap"


def test_an_s3_or_spark_outage_of_more_than_a_minute_raises_an_alarm(resources):
    outage = resources["DependencyOutageAlarm"]["Properties"]
    assert outage["Namespace"] == {"Fn::Sub": "${AWS::StackName}/Worker"}
    assert outage["MetricName"] in emf.OUTAGE_METRICS  # the outage lines publish it
    assert (outage["Statistic"], outage["ComparisonOperator"], outage["Threshold"]) == (
        "Maximum", "GreaterThanThreshold", 60)


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
