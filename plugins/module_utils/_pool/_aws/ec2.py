# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# This module_utils file is PRIVATE to the ec2spot.pool collection: its names and behaviour may change in any
# release. Do not import it from other collections, playbooks or standalone modules; use amazon.aws instead.
"""One thin function per EC2 call the pool makes. No pool logic here: shaping parameters, retrying throttled
calls with jittered backoff (a capped number of times, so a throttled account never sees a retry storm from us),
and turning botocore errors into Ec2Error, which carries the AWS error code the launcher decides on.
"""

from __future__ import annotations

import functools

try:
    import botocore.exceptions
except ImportError:
    pass  # AnsibleAWSModule reports the missing library; the hand-out path never imports this module.

from ansible_collections.amazon.aws.plugins.module_utils.retries import AWSRetry
from ansible_collections.amazon.aws.plugins.module_utils.tagging import ansible_dict_to_boto3_tag_list
from ansible_collections.amazon.aws.plugins.module_utils.tagging import boto3_tag_list_to_ansible_dict

from ..domain import identity
from ..domain.errors import PoolError
from . import retry

# The tags are defined with the rules that read them (identity.py); named here too for the callers of this module.
POOL_TAG = identity.POOL_TAG
POOL_ID_TAG = identity.POOL_ID_TAG
TYPE_TAG = identity.TYPE_TAG
RELEASED_TAG = identity.RELEASED_TAG  # a stopped fallback kept on purpose for reuse (fallback_action=stop)

LEASED_TAG = identity.LEASED_TAG
ORPHAN_TAG = identity.ORPHAN_TAG
LIVE_STATES = identity.LIVE_STATES
# retry.py's rule for the boto3 calls (CALLS: at most 4 attempts in all, random pauses under 1, 2 and 4 s), for the
# codes AWSRetry knows (retry.AWSRETRY_CODES: throttling, the passing server errors). botocore retries nothing below
# this: BOTOCORE_CONFIG allows it one attempt.
_retry = AWSRetry.jittered_backoff(**retry.backoff_args(retry.CALLS))


class Ec2Error(PoolError):
    """An EC2 call failed. `code` is AWS's error code (e.g. InsufficientInstanceCapacity)."""

    def __init__(self, operation, exception):
        self.exception = exception
        self.operation = operation
        # None when no answer came (connection error): the request may or may not have been carried out.
        self.status = None
        if isinstance(exception, botocore.exceptions.ClientError):
            self.status = exception.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            error = exception.response.get("Error", {})
            self.code = error.get("Code", "Unknown")
            text = error.get("Message", str(exception))
        elif isinstance(exception, botocore.exceptions.NoCredentialsError):
            self.code = retry.NO_CREDENTIALS
            text = ("no AWS credentials found: set access_key/secret_key or profile, or the AWS_ACCESS_KEY_ID/"
                    "AWS_SECRET_ACCESS_KEY or AWS_PROFILE environment variables")
        elif isinstance(exception, botocore.exceptions.NoRegionError):
            self.code = "NoRegion"
            text = "no AWS region set: set the region option or AWS_REGION"
        else:
            self.code = type(exception).__name__
            text = str(exception)
        super().__init__("%s failed: %s (%s)" % (operation, text, self.code), error_code=self.code)

    @property
    def refused(self):
        """EC2 answered with a client error: the request was not carried out (so it is safe to forget)."""
        return self.status is not None and 400 <= self.status < 500


def _ec2_call(operation):
    """Decorate a thin call: retry throttling, wrap every botocore failure in Ec2Error."""

    def decorate(func):
        retried = _retry(func)

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            try:
                return retried(*args, **kwargs)
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                raise Ec2Error(operation, exc) from exc

        return wrapper

    return decorate


def tag_list(tags):
    """EC2's [{"Key", "Value"}] of a dict. Sorted by key: launcher.ensure_template hashes the template data these go
    into, and the same tags in another order must not make a new template version. Keys as text: YAML may give a
    number (amazon.aws's helper makes text of the values only)."""
    text_keys = {str(key): value for key, value in tags.items()}
    return ansible_dict_to_boto3_tag_list(dict(sorted(text_keys.items())))


tag_dict = boto3_tag_list_to_ansible_dict  # EC2's [{"Key", "Value"}] (or None) as {key: value}


def _error_code(exc):
    """AWS's error code of a botocore ClientError ("" when the answer has none)."""
    # Not amazon.aws's is_boto3_error_code: its module, botocore.py, imports boto3 and ansible.module_utils.basic.
    return exc.response.get("Error", {}).get("Code", "")


@_ec2_call("CreateFleet")
def create_fleet(client, **params):
    """An instant fleet: returns the whole answer ({'Instances': [...], 'Errors': [...]})."""
    return client.create_fleet(**params)


@_ec2_call("CreateLaunchTemplate")
def create_launch_template(client, name, data, tags):
    return client.create_launch_template(
        LaunchTemplateName=name, LaunchTemplateData=data,
        TagSpecifications=[{"ResourceType": "launch-template", "Tags": tag_list(tags)}],
    )["LaunchTemplate"]


@_ec2_call("CreateLaunchTemplateVersion")
def create_launch_template_version(client, template_id, data):
    return client.create_launch_template_version(LaunchTemplateId=template_id,
                                                 LaunchTemplateData=data)["LaunchTemplateVersion"]


@_ec2_call("DescribeLaunchTemplates")
def find_launch_template(client, name):
    try:
        templates = client.describe_launch_templates(LaunchTemplateNames=[name])["LaunchTemplates"]
    except botocore.exceptions.ClientError as exc:
        if _error_code(exc).startswith("InvalidLaunchTemplateName"):
            return None
        raise
    return templates[0] if templates else None


@_ec2_call("DescribeLaunchTemplates")
def find_launch_template_by_id(client, template_id):
    """The template, or None when EC2 no longer knows it (deleted outside the pool)."""
    try:
        templates = client.describe_launch_templates(LaunchTemplateIds=[template_id])["LaunchTemplates"]
    except botocore.exceptions.ClientError as exc:
        if _error_code(exc).startswith(("InvalidLaunchTemplateId", "InvalidLaunchTemplateName")):
            return None
        raise
    return templates[0] if templates else None


@_ec2_call("GetServiceQuota")
def get_service_quota(quotas_client, quota_code, service_code="ec2"):
    """The value of a Service Quotas quota (a Service Quotas client, not an EC2 one)."""
    return quotas_client.get_service_quota(ServiceCode=service_code, QuotaCode=quota_code)["Quota"]["Value"]


@_ec2_call("DescribeLaunchTemplates")
def describe_pool_templates(client, pool_name):
    """Launch templates tagged with the pool name, as {"id", "name", "tags"}."""
    paginator = client.get_paginator("describe_launch_templates")
    found = []
    for page in paginator.paginate(Filters=[{"Name": "tag:" + POOL_TAG, "Values": [pool_name]}]):
        for template in page["LaunchTemplates"]:
            found.append({"id": template["LaunchTemplateId"], "name": template["LaunchTemplateName"],
                          "tags": tag_dict(template.get("Tags"))})
    return found


@_ec2_call("DeleteLaunchTemplate")
def delete_launch_template(client, template_id):
    try:
        client.delete_launch_template(LaunchTemplateId=template_id)
    except botocore.exceptions.ClientError as exc:
        if not _error_code(exc).startswith("InvalidLaunchTemplateId"):
            raise


@_ec2_call("CreateTags")
def create_tags(client, resource_ids, tags):
    if resource_ids:
        client.create_tags(Resources=list(resource_ids), Tags=tag_list(tags))


@_ec2_call("DeleteTags")
def delete_tags(client, resource_ids, keys):
    if resource_ids:
        client.delete_tags(Resources=list(resource_ids), Tags=[{"Key": key} for key in keys])


@_ec2_call("DescribeInstances")
def describe_instances(client, instance_ids=None, filters=None):
    """Instances by id and/or filters. Ids go into a filter: an id EC2 no longer knows is then simply absent
    instead of failing the whole call with InvalidInstanceID.NotFound."""
    filters = list(filters or [])
    if instance_ids is not None:
        if not instance_ids:
            return []
        filters.append({"Name": "instance-id", "Values": list(instance_ids)})
    paginator = client.get_paginator("describe_instances")
    instances = []
    for page in paginator.paginate(Filters=filters):
        for reservation in page["Reservations"]:
            instances.extend(reservation["Instances"])
    return instances


def describe_pool_instances(client, pool_name, states=("pending", "running", "stopping", "stopped")):
    return describe_instances(client, filters=[
        {"Name": "tag:" + POOL_TAG, "Values": [pool_name]},
        {"Name": "instance-state-name", "Values": list(states)},
    ])


@_ec2_call("TerminateInstances")
def terminate_instances(client, instance_ids):
    if not instance_ids:
        return []
    return client.terminate_instances(InstanceIds=list(instance_ids))["TerminatingInstances"]


@_ec2_call("StartInstances")
def start_instances(client, instance_ids):
    if not instance_ids:
        return []
    return client.start_instances(InstanceIds=list(instance_ids))["StartingInstances"]


@_ec2_call("StopInstances")
def stop_instances(client, instance_ids):
    if not instance_ids:
        return []
    return client.stop_instances(InstanceIds=list(instance_ids))["StoppingInstances"]


@_ec2_call("DescribeAvailabilityZones")
def describe_availability_zones(client):
    return client.describe_availability_zones(
        Filters=[{"Name": "zone-type", "Values": ["availability-zone"]}]
    )["AvailabilityZones"]


@_ec2_call("DescribeSubnets")
def describe_subnets(client, subnet_ids):
    return client.describe_subnets(SubnetIds=list(subnet_ids))["Subnets"]


@_ec2_call("DescribeInstanceTypes")
def describe_instance_types(client, instance_types):
    """The DescribeInstanceTypes items of `instance_types`, asked 100 at a time (the most one request takes)."""
    instance_types = list(instance_types)
    paginator = client.get_paginator("describe_instance_types")
    return [item for start in range(0, len(instance_types), 100)
            for page in paginator.paginate(InstanceTypes=instance_types[start:start + 100])
            for item in page["InstanceTypes"]]


def instance_summary(instance):
    """The fields of a DescribeInstances item that the pool keeps."""
    return {
        "id": instance["InstanceId"],
        "state": instance.get("State", {}).get("Name"),
        "public_ip": instance.get("PublicIpAddress"),
        "private_ip": instance.get("PrivateIpAddress"),
        "availability_zone": instance.get("Placement", {}).get("AvailabilityZone"),
        "subnet_id": instance.get("SubnetId"),
        "instance_type": instance.get("InstanceType"),
        "lifecycle": instance.get("InstanceLifecycle", "on-demand"),
        "launch_time": instance.get("LaunchTime"),
        "state_reason": (instance.get("StateReason") or {}).get("Code"),
        "tags": tag_dict(instance.get("Tags")),
    }
