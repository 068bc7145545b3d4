"""What IAM authorizes for each AWS call of a run: the action, every resource ARN the call
touches, and the condition keys AWS fills in (the resource's tags as they were at the call, the
request's tags, ``ec2:CreateAction`` for tags applied by a creating call).

``AccessRecorder`` hooks a boto3 session: before each call it reads the tags of the resources
the call names back from the stand-in (through clients of its own, which it does not record),
after it the ids of what the call created. ``iam_requests`` turns each record into the requests
the evaluator judges, one per (action, resource), as the Service Authorization Reference lists
the resource types of each action.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3

ACCOUNT = "123456789012"  # moto's account
PRINCIPAL = f"arn:aws:iam::{ACCOUNT}:user/moto"
# botocore's service names where IAM's action prefixes differ.
IAM_PREFIX = {"service-quotas": "servicequotas"}
# S3 operations whose IAM action has another name (Service Authorization Reference, Amazon S3).
S3_ACTIONS = {
    "HeadObject": "GetObject",
    "CreateMultipartUpload": "PutObject",
    "UploadPart": "PutObject",
    "CompleteMultipartUpload": "PutObject",
    "ListParts": "ListMultipartUploadParts",
    "ListMultipartUploads": "ListBucketMultipartUploads",
    "ListObjectsV2": "ListBucket",
}
# ImportSnapshot is authorized on the snapshot it will make, whose id nobody knows yet; the
# evaluator needs a concrete ARN, and the request's tags are what the policy judges.
SNAPSHOT_TO_BE_IMPORTED = "snap-00000000000000000"
# EC2 id prefix -> (resource type, whether its ARN carries the account: AMIs and snapshots have
# none, "arn:aws:ec2:region::image/ami-…").
EC2_TYPES = {
    "ami": ("image", False),
    "snap": ("snapshot", False),
    "i": ("instance", True),
    "vol": ("volume", True),
    "eni": ("network-interface", True),
    "sg": ("security-group", True),
    "sgr": ("security-group-rule", True),
    "subnet": ("subnet", True),
    "vpc": ("vpc", True),
    "import": ("import-snapshot-task", True),  # import-snap-…
}


def ec2_arn(region: str, resource_id: str) -> str:
    kind, with_account = EC2_TYPES[resource_id.split("-", 1)[0]]
    return f"arn:aws:ec2:{region}:{ACCOUNT if with_account else ''}:{kind}/{resource_id}"


def key_pair_arn(region: str, name: str) -> str:
    return f"arn:aws:ec2:{region}:{ACCOUNT}:key-pair/{name}"


def tag_dict(tags: list[dict[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tags or []}


@dataclass
class Call:
    """One AWS call as IAM sees it."""

    service: str
    operation: str
    region: str
    params: dict[str, Any]
    existing: dict[str, dict[str, str]] = field(default_factory=dict)  # ARN -> tags at the call
    created: list[str] = field(default_factory=list)  # ARNs of what the call made
    error: str = ""  # the error code AWS answered, "" on success

    @property
    def action(self) -> str:
        if self.service == "s3":
            return f"s3:{S3_ACTIONS.get(self.operation, self.operation)}"
        return f"{IAM_PREFIX.get(self.service, self.service)}:{self.operation}"

    def request_tags(self) -> dict[str, str]:
        """Every tag the request carries (aws:RequestTag is request-wide)."""
        if self.operation == "CreateTags" or self.service == "ebs":
            return tag_dict(self.params.get("Tags"))
        tags: dict[str, str] = {}
        for spec in self.params.get("TagSpecifications") or []:
            tags |= tag_dict(spec.get("Tags"))
        return tags

    def tagged_on_create(self) -> set[str]:
        """The resource types this creating call tags (TagSpecifications' ResourceType)."""
        if self.service == "ebs":
            return {"snapshot"} if self.params.get("Tags") else set()
        if self.operation == "CreateTags":
            return set()
        return {s["ResourceType"] for s in self.params.get("TagSpecifications") or []}


class AccessRecorder:
    """Records every call of clients of ``session`` (created after it) as a ``Call``."""

    def __init__(self, session: boto3.session.Session, endpoint_url: str) -> None:
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._endpoint = endpoint_url
        self._readers: dict[str, Any] = {}
        self._reader_session = boto3.session.Session()  # not hooked: its reads are not recorded
        session.events.register("provide-client-params", self._params)
        session.events.register("before-call", self._before)
        session.events.register("after-call", self._after)

    def _ec2(self, region: str) -> Any:
        with self._lock:
            if region not in self._readers:
                self._readers[region] = self._reader_session.client(
                    "ec2", region_name=region, endpoint_url=self._endpoint
                )
            return self._readers[region]

    def _params(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["fedimg_params"] = copy.deepcopy(params)

    def _before(self, model: Any, context: dict[str, Any], **_: Any) -> None:
        params = context.get("fedimg_params", {})
        region = context.get("client_region") or "us-east-1"
        call = Call(model.service_model.service_name, model.name, region, params)
        if not params.get("DryRun"):  # a dry run names placeholders: nothing to read back
            call.existing = self._existing(call)
        context["fedimg_call"] = call

    def _after(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        call: Call | None = context.get("fedimg_call")
        if call is None:
            return
        call.error = parsed.get("Error", {}).get("Code", "")
        if not call.error:
            call.created = self._created(call, parsed)
        with self._lock:
            self.calls.append(call)

    def _tags(self, region: str, ids: list[str]) -> dict[str, dict[str, str]]:
        """The tags of EC2 resources ``ids``, read back now (before the call changes them)."""
        found: dict[str, dict[str, str]] = {i: {} for i in ids}
        if ids:
            answer = self._ec2(region).describe_tags(
                Filters=[{"Name": "resource-id", "Values": ids}]
            )
            for t in answer["Tags"]:
                found[t["ResourceId"]][t["Key"]] = t["Value"]
        return {ec2_arn(region, i): tags for i, tags in found.items()}

    def _key_pair(self, region: str, name: str) -> dict[str, dict[str, str]]:
        pairs = self._ec2(region).describe_key_pairs(
            Filters=[{"Name": "key-name", "Values": [name]}]
        )["KeyPairs"]
        tags = tag_dict(pairs[0].get("Tags")) if pairs else {}
        return {key_pair_arn(region, name): tags}

    def _import_task(self, region: str, task_id: str) -> dict[str, dict[str, str]]:
        tasks = self._ec2(region).describe_import_snapshot_tasks(ImportTaskIds=[task_id])
        found = tasks["ImportSnapshotTasks"]
        return {ec2_arn(region, task_id): tag_dict(found[0].get("Tags")) if found else {}}

    def _image_snapshots(self, region: str, ami: str) -> list[str]:
        images = self._ec2(region).describe_images(Filters=[{"Name": "image-id", "Values": [ami]}])[
            "Images"
        ]
        return [
            m["Ebs"]["SnapshotId"]
            for image in images
            for m in image.get("BlockDeviceMappings", [])
            if m.get("Ebs", {}).get("SnapshotId")
        ]

    def _existing(self, call: Call) -> dict[str, dict[str, str]]:
        """The resources the call acts on that exist before it, with their tags."""
        p, region, op = call.params, call.region, call.operation
        if call.service == "ebs":
            return self._tags(region, [p["SnapshotId"]]) if "SnapshotId" in p else {}
        if call.service != "ec2" or (op.startswith("Describe") and op != "DescribeImageAttribute"):
            return {}  # these reads name no resource type: IAM evaluates them on "*"
        if op == "CreateTags":
            return self._tags(region, list(p["Resources"]))
        if op == "RegisterImage":
            ids = [m["Ebs"]["SnapshotId"] for m in p.get("BlockDeviceMappings", []) if "Ebs" in m]
            return self._tags(region, ids)
        if op == "RunInstances":
            ids = [p["ImageId"], *self._image_snapshots(region, p["ImageId"])]
            found = self._tags(region, ids + list(p.get("SecurityGroupIds", [])))
            return found | (self._key_pair(region, p["KeyName"]) if "KeyName" in p else {})
        if op == "DeleteKeyPair":
            return self._key_pair(region, p["KeyName"])
        if op == "CancelImportTask":
            return self._import_task(region, p["ImportTaskId"])
        if op == "CopyImage":
            return {}  # the source AMI: CopyImage's "image" resource has no ResourceTag key
        ids = [p[k] for k in ("ImageId", "SnapshotId", "GroupId", "InstanceId") if k in p]
        return self._tags(region, ids + list(p.get("InstanceIds", [])))

    def _created(self, call: Call, parsed: dict[str, Any]) -> list[str]:
        """ARNs of what the call made (read back where the answer does not name it)."""
        p, region, op = call.params, call.region, call.operation
        if op == "StartSnapshot":
            return [ec2_arn(region, parsed["SnapshotId"])]
        if op == "RegisterImage":
            return [ec2_arn(region, parsed["ImageId"])]
        if op == "CopyImage":
            ami = parsed["ImageId"]
            return [ec2_arn(region, i) for i in [ami, *self._image_snapshots(region, ami)]]
        if op == "ImportKeyPair":
            return [key_pair_arn(region, p["KeyName"])]
        if op == "CreateSecurityGroup":
            return [ec2_arn(region, parsed["GroupId"])]
        if op == "ImportSnapshot":
            task = parsed["ImportTaskId"]
            return [ec2_arn(region, task), ec2_arn(region, SNAPSHOT_TO_BE_IMPORTED)]
        if op == "AuthorizeSecurityGroupIngress":
            rules = parsed.get("SecurityGroupRules", [])
            return [ec2_arn(region, r["SecurityGroupRuleId"]) for r in rules]
        if op == "RunInstances":
            return self._launched(region, [i["InstanceId"] for i in parsed["Instances"]])
        return []

    def _launched(self, region: str, instance_ids: list[str]) -> list[str]:
        """The instances with their new volumes and network interfaces."""
        reservations = self._ec2(region).describe_instances(InstanceIds=instance_ids)
        ids = list(instance_ids)
        for r in reservations["Reservations"]:
            for i in r["Instances"]:
                ids += [m["Ebs"]["VolumeId"] for m in i.get("BlockDeviceMappings", [])]
                ids += [n["NetworkInterfaceId"] for n in i.get("NetworkInterfaces", [])]
        return [ec2_arn(region, i) for i in ids]


# Resource types a call may use that are the account's, not fedimg's (the default VPC's
# network; a security group's rules, which follow their group).
ACCOUNT_KINDS = ("subnet", "vpc", "security-group-rule")


def is_account_resource(arn: str) -> bool:
    return arn.split(":")[-1].split("/")[0] in ACCOUNT_KINDS


# The account's resources a call uses, so that the evaluator sees every resource type AWS
# authorizes for it.
def _account_resources(call: Call) -> list[str]:
    if call.operation == "RunInstances":
        return [f"arn:aws:ec2:{call.region}:{ACCOUNT}:subnet/subnet-default"]
    if call.operation == "CreateSecurityGroup":
        return [f"arn:aws:ec2:{call.region}:{ACCOUNT}:vpc/vpc-default"]
    return []


def _non_ec2_resources(call: Call) -> list[str]:
    p, region = call.params, call.region
    if call.service == "ssm":
        names = p.get("Names") or [p.get("Name") or p.get("Path", "")]
        return [f"arn:aws:ssm:{region}:{ACCOUNT}:parameter/{n.lstrip('/')}" for n in names]
    if call.service == "s3":
        key = f"/{p['Key']}" if "Key" in p else ""
        return [f"arn:aws:s3:::{p['Bucket']}{key}"]
    return [_other_resource(call)]


def _other_resource(call: Call) -> str:
    p, region = call.params, call.region
    if call.service == "service-quotas":
        return f"arn:aws:servicequotas:{region}:{ACCOUNT}:{p['ServiceCode']}/{p['QuotaCode']}"
    if call.service == "iam" and "PolicySourceArn" in p:
        return str(p["PolicySourceArn"])
    return "*"


def resource_context(tags: dict[str, str], service: str) -> dict[str, str | list[str]]:
    context: dict[str, str | list[str]] = {f"aws:ResourceTag/{k}": v for k, v in tags.items()}
    if service in ("ec2", "ebs"):
        context |= {f"ec2:ResourceTag/{k}": v for k, v in tags.items()}
    return context


def request_context(call: Call) -> dict[str, str | list[str]]:
    tags = call.request_tags()
    context: dict[str, str | list[str]] = {f"aws:RequestTag/{k}": v for k, v in tags.items()}
    if tags:
        context["aws:TagKeys"] = sorted(tags)
    if call.service == "s3" and call.operation == "ListObjectsV2":
        context["s3:prefix"] = str(call.params.get("Prefix", ""))
    return context


def iam_requests(call: Call) -> Iterator[dict[str, Any]]:
    """The requests IAM evaluates for ``call``: {"action", "resource", "context"}."""
    asked = request_context(call)
    for arn, tags in call.existing.items():
        yield {
            "action": call.action,
            "resource": arn,
            "context": resource_context(tags, call.service) | asked,
        }
    for arn in [*call.created, *_account_resources(call)]:
        yield {"action": call.action, "resource": arn, "context": asked}
    if not call.existing and not call.created:
        for arn in _non_ec2_resources(call):
            yield {"action": call.action, "resource": arn, "context": asked}
    # Tags given to a creating call are applied by ec2:CreateTags, authorized with
    # ec2:CreateAction naming the call (EC2 User Guide, "Grant permission to tag on creation").
    tagged = call.tagged_on_create()
    for arn in call.created:
        if arn.split(":")[5].split("/")[0] in tagged:
            yield {
                "action": "ec2:CreateTags",
                "resource": arn,
                "context": asked | {"ec2:CreateAction": call.operation},
            }
