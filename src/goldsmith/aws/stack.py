"""The CI stack (aws/ci-stack.yml): rendered with aws/policy.json, validated, deployed.

The template holds a placeholder where the build role's policy goes; `render` puts
aws/policy.json's document there, so the policy is written once and reviewed on its own,
and what cfn-lint checks (`./run lint`) is exactly what is deployed.

`deploy` creates the stack or updates it and waits, printing each resource's events as
they come; a stack that is already as the template says is not an error. A failed create
or update names each resource that failed and CloudFormation's reason.

The stack is deployed once in each of the images' regions, the build region first: there
it makes the CI, elsewhere only the AMI key (see the template's header).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import GoldsmithError
from ..tools import log
from .clients import Aws, AwsError
from .policy import POLICY, load_policy

TEMPLATE = Path("aws") / "ci-stack.yml"
# The build policy's resource and the value goldsmith replaces with aws/policy.json.
POLICY_RESOURCE = "BuildPolicy"
PLACEHOLDER = "GOLDSMITH_POLICY_JSON"
DEFAULT_STACK_NAME = "goldsmith-ci"
# CloudFormation's limit for a template passed in the request (larger ones go through S3).
MAX_TEMPLATE_BODY = 51_200
# The stack makes IAM roles and policies with generated names.
CAPABILITIES = ["CAPABILITY_IAM"]
TERMINAL_OK = {"CREATE_COMPLETE", "UPDATE_COMPLETE"}
BUSY_SUFFIX = "_IN_PROGRESS"


class StackError(GoldsmithError):
    """Deploying the CI stack failed; the message names the failing resources."""


@dataclass
class Deployed:
    """What one region's deployment did."""

    region: str
    stack_name: str
    action: str  # "created", "updated", "unchanged"
    status: str
    outputs: dict[str, str] = field(default_factory=dict)


# --- Rendering -------------------------------------------------------------------------


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form functions (!Ref, !Sub, !GetAtt, ...)."""


def _function(name: str) -> Callable[[yaml.SafeLoader, yaml.Node], dict[str, Any]]:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
            if name == "Fn::GetAtt":
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return {name: value}

    return construct


for _tag in (
    "Ref",
    "Sub",
    "GetAtt",
    "Join",
    "Select",
    "Split",
    "If",
    "Equals",
    "Not",
    "And",
    "Or",
    "FindInMap",
    "GetAZs",
    "ImportValue",
    "Base64",
    "Cidr",
):
    _CfnLoader.add_constructor(f"!{_tag}", _function(_tag if _tag == "Ref" else f"Fn::{_tag}"))
# !Condition (a condition used in another) is {"Condition": name}, not "Fn::Condition".
_CfnLoader.add_constructor("!Condition", lambda loader, node: {"Condition": node.value})


def render(root: Path) -> dict[str, Any]:
    """The CI stack's template with aws/policy.json at the build policy's placeholder."""
    path = root / TEMPLATE
    try:
        template = yaml.load(path.read_text(), Loader=_CfnLoader)
    except (OSError, yaml.YAMLError) as err:
        raise GoldsmithError(f"{TEMPLATE}: cannot read the template ({err})") from None
    try:
        props = template["Resources"][POLICY_RESOURCE]["Properties"]
    except (KeyError, TypeError):
        raise GoldsmithError(
            f"{TEMPLATE}: no Resources.{POLICY_RESOURCE}.Properties, where aws/policy.json goes"
        ) from None
    if props.get("PolicyDocument") != PLACEHOLDER:
        raise GoldsmithError(
            f"{TEMPLATE}: Resources.{POLICY_RESOURCE}.Properties.PolicyDocument must be "
            f"{PLACEHOLDER}; the policy itself lives in {POLICY}, once"
        )
    props["PolicyDocument"] = load_policy(root)
    return template


def template_body(root: Path) -> str:
    """The rendered template as CloudFormation gets it (compact JSON)."""
    body = json.dumps(render(root), separators=(",", ":"))
    if len(body.encode()) > MAX_TEMPLATE_BODY:
        raise GoldsmithError(
            f"{TEMPLATE} rendered with {POLICY} is {len(body.encode())} bytes; CloudFormation "
            f"takes at most {MAX_TEMPLATE_BODY} in a request"
        )
    return body


def write_rendered(root: Path, dest: Path) -> Path:
    """Write the rendered template to `dest` (for cfn-lint), as readable JSON."""
    dest.write_text(json.dumps(render(root), indent=2) + "\n")
    return dest


# --- What images.yml says ----------------------------------------------------------------


def image_regions(root: Path) -> list[str]:
    """Every region of the images' aws sections, in images.yml's order (the first is where
    the builds run)."""
    from ..catalogue import load

    regions: list[str] = []
    for image in load(root / "images.yml").images.values():
        if image.aws is not None:
            regions += [r for r in image.aws.regions if r not in regions]
    return regions


def catalogue_parameters(root: Path) -> dict[str, str]:
    """The template's parameters images.yml decides: the accounts AMIs are shared with and
    the key's alias (when the images name one alias, as this project's do)."""
    from ..catalogue import load

    shared: list[str] = []
    aliases: set[str] = set()
    for image in load(root / "images.yml").images.values():
        if image.aws is None:
            continue
        shared += [a for a in image.aws.share_with if a not in shared]
        aliases |= {k for k in image.aws.kms_key_ids.values() if k.startswith("alias/")}
    params = {"ShareWithAccounts": ",".join(shared)}
    if len(aliases) == 1:
        params["KeyAlias"] = aliases.pop()
    return params


# --- CloudFormation ----------------------------------------------------------------------


def validate(aws: Aws, region: str, root: Path) -> list[str]:
    """CloudFormation's own check of the rendered template; returns its parameter names."""
    cfn = aws.client("cloudformation", region)
    answer = cfn.validate_template(TemplateBody=template_body(root))
    return [p["ParameterKey"] for p in answer.get("Parameters", [])]


def describe(aws: Aws, region: str, stack_name: str) -> dict[str, Any] | None:
    """The stack, or None when there is none of that name in `region`."""
    cfn = aws.client("cloudformation", region)
    try:
        stacks = cfn.describe_stacks(StackName=stack_name)["Stacks"]
    except AwsError as err:
        if err.code == "ValidationError" and "does not exist" in str(err):
            return None
        raise
    return stacks[0] if stacks else None


def deploy(
    aws: Aws,
    region: str,
    stack_name: str,
    root: Path,
    parameters: Mapping[str, str] | None = None,
    *,
    timeout_s: float = 1800.0,
    poll_s: float = 5.0,
) -> Deployed:
    """Create the stack or update it, wait until CloudFormation is done, return its outputs.

    An update with nothing to change is "unchanged", not an error. A failed create or
    update raises StackError naming each failed resource and CloudFormation's reason.
    """
    cfn = aws.client("cloudformation", region)
    body = template_body(root)
    given = dict(parameters or {})
    params = [{"ParameterKey": k, "ParameterValue": v} for k, v in given.items()]
    current = describe(aws, region, stack_name)
    if current:
        # What an earlier deployment set stays unless given again (CloudFormation would
        # otherwise reset a parameter left out of an update to its default).
        params += [
            {"ParameterKey": p["ParameterKey"], "UsePreviousValue": True}
            for p in current.get("Parameters", [])
            if p["ParameterKey"] not in given
        ]
    where = f"stack {stack_name} in {region}"
    if current and current["StackStatus"].endswith(BUSY_SUFFIX):
        raise StackError(
            f"{where} is busy ({current['StackStatus']}); deploy again when it is done"
        )
    if current and current["StackStatus"] == "ROLLBACK_COMPLETE":
        raise StackError(
            f"{where} is ROLLBACK_COMPLETE: its first create failed and it cannot be updated. "
            f"{_failures(cfn, current['StackId'], since=None) or ''}"
            f"Delete it (`aws cloudformation delete-stack --stack-name {stack_name} "
            f"--region {region}`) and deploy again"
        )
    if current and _unchanged(cfn, current, body, given):
        log("ci", f"{where} is up to date")
        return Deployed(region, stack_name, "unchanged", current["StackStatus"], _outputs(current))
    started = _now(cfn, current["StackId"]) if current else None
    request = {
        "StackName": stack_name,
        "TemplateBody": body,
        "Parameters": params,
        "Capabilities": CAPABILITIES,
        "Tags": [{"Key": "goldsmith:stack", "Value": "ci"}],
    }
    if current is None:
        log("ci", f"creating {where}")
        try:
            stack_id = cfn.create_stack(**request, OnFailure="ROLLBACK")["StackId"]
        except AwsError as err:
            # AWS refuses here only what it checks up front (the template, parameters,
            # capabilities); moto also fails here on a resource it cannot create.
            raise StackError(f"{where}: create refused: {err}") from None
        action = "created"
    else:
        log("ci", f"updating {where}")
        try:
            stack_id = cfn.update_stack(**request)["StackId"]
        except AwsError as err:
            if err.code == "ValidationError" and "No updates are to be performed" in str(err):
                log("ci", f"{where} is up to date")
                return Deployed(
                    region, stack_name, "unchanged", current["StackStatus"], _outputs(current)
                )
            raise StackError(f"{where}: update refused: {err}") from None
        action = "updated"
    final = _wait(cfn, stack_id, where, started, timeout_s, poll_s)
    if final["StackStatus"] not in TERMINAL_OK:
        reasons = _failures(cfn, stack_id, since=started)
        verb = "create" if action == "created" else "update"
        raise StackError(
            f"{where}: {verb} failed ({final['StackStatus']})"
            + (f": {reasons}" if reasons else f": {final.get('StackStatusReason', '')}")
        )
    log("ci", f"{where}: {final['StackStatus']}")
    return Deployed(region, stack_name, action, final["StackStatus"], _outputs(final))


def deploy_all(
    aws_for: Callable[[str], Aws],
    regions: Sequence[str],
    stack_name: str,
    root: Path,
    parameters: Mapping[str, str] | None = None,
) -> list[Deployed]:
    """Deploy in `regions`, the first being the build region (the whole CI); the others
    get the AMI key. Stops at the first region that fails."""
    if not regions:
        raise GoldsmithError("no region to deploy the CI stack in: images.yml has no aws regions")
    params = {**(parameters or {}), "BuildRegion": regions[0]}
    done = []
    for region in dict.fromkeys(regions):
        done.append(deploy(aws_for(region), region, stack_name, root, params))
    return done


def _unchanged(cfn: Any, current: Mapping[str, Any], body: str, given: Mapping[str, str]) -> bool:
    """Whether the stack already has this template and these parameter values.

    CloudFormation answers an update without changes with "No updates are to be
    performed" too; asking first keeps that answer the same on moto, which compares typed
    parameters (a Number, a list) with the strings of the request and so sees a change."""
    deployed = cfn.get_template(StackName=current["StackId"])["TemplateBody"]
    if isinstance(deployed, str):
        deployed = json.loads(deployed)
    if deployed != json.loads(body):
        return False
    values = {p["ParameterKey"]: p.get("ParameterValue", "") for p in current.get("Parameters", [])}
    return all(_same_value(values.get(k), v) for k, v in given.items())


def _same_value(current: str | None, given: str) -> bool:
    if current is None:
        return False
    # A list parameter is "a,b" on AWS; moto reports it as a Python list ("['a', 'b']").
    if current.startswith("[") and current.endswith("]"):
        current = ",".join(x.strip(" '\"") for x in current[1:-1].split(",") if x.strip())
    return current == given


def _outputs(stack: Mapping[str, Any]) -> dict[str, str]:
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def _events(cfn: Any, stack_id: str) -> list[dict[str, Any]]:
    """The stack's events, oldest first."""
    events: list[dict[str, Any]] = []
    for page in cfn.get_paginator("describe_stack_events").paginate(StackName=stack_id):
        events += page["StackEvents"]
    return list(reversed(events))


def _now(cfn: Any, stack_id: str) -> Any:
    """The time of the stack's newest event: later events belong to this deployment."""
    events = _events(cfn, stack_id)
    return events[-1]["Timestamp"] if events else None


def _failures(cfn: Any, stack_id: str, since: Any) -> str:
    """`Resource (Type): reason` of each resource that failed after `since`; CloudFormation's
    "Resource creation cancelled" of the resources stopped because of another is left out."""
    failed = []
    for e in _events(cfn, stack_id):
        if since is not None and e["Timestamp"] <= since:
            continue
        if not e.get("ResourceStatus", "").endswith("_FAILED"):
            continue
        if e.get("LogicalResourceId") == e.get("StackName"):
            continue
        reason = e.get("ResourceStatusReason", "")
        if "cancelled" in reason.lower():
            continue
        failed.append(f"{e['LogicalResourceId']} ({e.get('ResourceType', '?')}): {reason}")
    return "; ".join(failed)


def _wait(
    cfn: Any, stack_id: str, where: str, since: Any, timeout_s: float, poll_s: float
) -> dict[str, Any]:
    """Poll until the stack leaves *_IN_PROGRESS, logging each new event once."""
    deadline = time.monotonic() + timeout_s
    seen: set[str] = set()
    while True:
        for e in _events(cfn, stack_id):
            if e["EventId"] in seen or (since is not None and e["Timestamp"] <= since):
                continue
            seen.add(e["EventId"])
            reason = f": {e['ResourceStatusReason']}" if e.get("ResourceStatusReason") else ""
            log("ci", f"{e['LogicalResourceId']} {e['ResourceStatus']}{reason}")
        stack = cfn.describe_stacks(StackName=stack_id)["Stacks"][0]
        if not stack["StackStatus"].endswith(BUSY_SUFFIX):
            return stack
        if time.monotonic() > deadline:
            raise StackError(
                f"{where}: still {stack['StackStatus']} after {timeout_s:.0f}s; "
                "see its events in the CloudFormation console"
            )
        time.sleep(poll_s)
