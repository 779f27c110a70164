"""Retire old builds of an image: deprecate, then deregister and delete the snapshots.

A build is every AMI carrying its build id (`goldsmith:build-id`) and the image's name
(`goldsmith:image`): the one Packer made in the build region and publish's copy in each
other region. It is judged, and retired, as one: in every region of the image or not at
all.

Which builds go (the rules, images.yml `aws.retention` or the command line):

- `keep N`: the newest N builds stay (by build time, the time in the build id);
- `max_age_days D`: builds older than D days go; with `keep` as well, only those that are
  both beyond the newest N and older than D days (keep N is then a floor).

Whatever the rules say, these stay (each reason shown in the table):

- the newest proven build, and a build whose id carries no time (it cannot be ranked);
- a build in use, in any region: an instance (pending, running, stopping, stopped)
  launched from it, any version of any launch template naming it (a version naming an
  SSM parameter outside /goldsmith/ is read; one that cannot be read stops the prune),
  an auto scaling group whose launch template version or launch configuration names it,
  an SSM parameter under /goldsmith/ pointing at it (a channel or `latest`);
- a build with the exclusion tag `goldsmith:keep` (any value) on any of its AMIs;
- a build with an AMI that is not `available` (a copy in progress).

Retiring a build: every AMI of it is deprecated at once (EnableImageDeprecation, so a
consumer sees it is going), then each is deregistered and its snapshots deleted. A step
that fails stops that build (a build whose deprecation failed is not deregistered), the
other builds go on, and the result lists what was done and what was not; running the
prune again finishes the job (every step is idempotent).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import GoldsmithError
from ..tools import log
from . import amis, notify, reaper, ssm
from .clients import Aws, AwsError

TAG_KEEP = "goldsmith:keep"
# Where goldsmith's pointers live: a parameter here pointing at an AMI keeps its build.
SSM_ROOT = "/goldsmith"
SSM_RESOLVE = "resolve:ssm:"
# Instances in these states use their AMI (a stopped one starts from it again).
USING_STATES = ["pending", "running", "stopping", "stopped"]
# EC2 may refuse a snapshot's deletion for a moment after its AMI is deregistered.
SNAPSHOT_IN_USE = "InvalidSnapshot.InUse"


@dataclass(frozen=True)
class Rules:
    """Which builds are old enough to retire (None: that rule is not set)."""

    keep: int | None = None
    max_age_days: int | None = None

    def __post_init__(self) -> None:
        if self.keep is None and self.max_age_days is None:
            raise GoldsmithError(
                "no retention rule: give --keep N or --max-age DAYS, or set "
                "aws.retention: {keep: N, max_age_days: D} for the image in images.yml"
            )
        for name, value in (("keep", self.keep), ("max age", self.max_age_days)):
            if value is not None and value < 1:
                raise GoldsmithError(f"{name} must be at least 1, not {value}")

    def __str__(self) -> str:
        parts = [f"keep {self.keep}"] if self.keep is not None else []
        if self.max_age_days is not None:
            parts.append(f"max age {self.max_age_days} days")
        return ", ".join(parts)


@dataclass
class Build:
    """One build of the image: its AMIs in every region where it has one."""

    build_id: str
    images: dict[str, dict[str, Any]] = field(default_factory=dict)  # {region: image}

    @property
    def built_at(self) -> datetime | None:
        return amis.build_time(self.build_id)

    @property
    def ami_ids(self) -> dict[str, str]:
        return {r: i["ImageId"] for r, i in sorted(self.images.items())}

    def excluded(self) -> str | None:
        """The value of the exclusion tag on any of its AMIs, or None."""
        for image in self.images.values():
            tags = amis.tags_of(image)
            if TAG_KEEP in tags:
                return tags[TAG_KEEP]
        return None


@dataclass
class Verdict:
    """What happens to one build, and why."""

    build: Build
    prune: bool
    reasons: list[str]

    @property
    def action(self) -> str:
        return "prune" if self.prune else "keep"


@dataclass
class Pruned:
    """What an applied prune did, and what it could not do: 'region:id' entries."""

    deprecated: list[str] = field(default_factory=list)
    deregistered: list[str] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "build: what was not done (why)"
    builds: list[str] = field(default_factory=list)  # builds retired completely

    def summary(self) -> str:
        done = (
            f"{len(self.builds)} build(s) retired: {len(self.deprecated)} AMI(s) deprecated, "
            f"{len(self.deregistered)} deregistered, {len(self.snapshots)} snapshot(s) deleted"
        )
        if not self.failed:
            return done
        return done + "\nnot done:\n" + "\n".join(f"  {f}" for f in self.failed)


# --- finding builds and their users ---------------------------------------------------


def find_builds(aws: Aws, image: str, regions: Iterable[str]) -> list[Build]:
    """Every build of `image` in `regions`, newest first (undatable ones last)."""
    builds: dict[str, Build] = {}
    flt = {f"tag:{amis.TAG_IMAGE}": [image], "tag-key": [amis.TAG_BUILD_ID]}
    for region in dict.fromkeys(regions):
        for found in amis.describe_images(aws, region, owners=["self"], filters=flt):
            build_id = amis.tags_of(found)[amis.TAG_BUILD_ID]
            build = builds.setdefault(build_id, Build(build_id))
            # Two AMIs of one build in one region: the original wins over a copy.
            if region not in build.images or amis.TAG_SOURCE_AMI in amis.tags_of(
                build.images[region]
            ):
                build.images[region] = found
    epoch = datetime.min.replace(tzinfo=UTC)
    return sorted(builds.values(), key=lambda b: (b.built_at or epoch, b.build_id), reverse=True)


def find_users(aws: Aws, regions: Iterable[str]) -> dict[str, list[str]]:
    """{AMI id: what uses it} for every AMI in use in `regions`."""
    users: dict[str, list[str]] = {}

    def use(ami_id: str, by: str) -> None:
        users.setdefault(ami_id, []).append(by)

    for region in dict.fromkeys(regions):
        for inst in reaper.instances(aws, region, {"instance-state-name": USING_STATES}):
            state = inst.get("State", {}).get("Name", "")
            use(inst.get("ImageId", ""), f"instance {inst['InstanceId']} ({state}, {region})")
        templates = _launch_templates(aws, region)
        for template in templates.values():
            for number, ami_id in sorted(template["versions"].items()):
                use(ami_id, f"launch template {template['name']} v{number} ({region})")
        for group, ami_id in _auto_scaling_groups(aws, region, templates):
            use(ami_id, f"auto scaling group {group} ({region})")
        for name, ami_id in _goldsmith_parameters(aws, region):
            use(ami_id, f"SSM {name} ({region})")
    return users


def _pages(aws: Aws, service: str, region: str, operation: str, **kwargs: Any) -> Iterator[Any]:
    yield from aws.client(service, region).get_paginator(operation).paginate(**kwargs)


def _launch_templates(aws: Aws, region: str) -> dict[str, dict[str, Any]]:
    """{template id: name, default and latest version, {version: AMI}} in `region`."""
    templates: dict[str, dict[str, Any]] = {}
    for page in _pages(aws, "ec2", region, "describe_launch_templates"):
        for t in page.get("LaunchTemplates", []):
            templates[t["LaunchTemplateId"]] = {
                "name": t.get("LaunchTemplateName", t["LaunchTemplateId"]),
                "$Default": str(t.get("DefaultVersionNumber", "")),
                "$Latest": str(t.get("LatestVersionNumber", "")),
                "versions": {},
            }
    for template_id, template in templates.items():
        for page in _pages(
            aws,
            "ec2",
            region,
            "describe_launch_template_versions",
            LaunchTemplateId=template_id,
        ):
            for version in page.get("LaunchTemplateVersions", []):
                image_id = version.get("LaunchTemplateData", {}).get("ImageId", "")
                where = f"launch template {template['name']} v{version['VersionNumber']}"
                ami_id = _resolve(aws, region, image_id, where)
                if ami_id:
                    template["versions"][str(version["VersionNumber"])] = ami_id
    return templates


def _resolve(aws: Aws, region: str, image_id: str, where: str) -> str:
    """The AMI a launch template's ImageId names ("resolve:ssm:NAME" is read).

    A parameter under /goldsmith/ is every pointer goldsmith already counts, so it is
    not read twice; another one that cannot be read stops the prune: an AMI it may name
    cannot be shown to be unused.
    """
    if not image_id.startswith(SSM_RESOLVE):
        return image_id
    name = image_id[len(SSM_RESOLVE) :]
    if name.startswith(SSM_ROOT + "/"):
        return ""
    try:
        return ssm.get_ami(aws, region, name) or ""
    except GoldsmithError as err:
        raise GoldsmithError(
            f"{where} ({region}) names its AMI by SSM parameter {name}, which cannot be "
            f"read ({err}): nothing is pruned while an AMI in use cannot be told apart"
        ) from None


def _auto_scaling_groups(
    aws: Aws, region: str, templates: Mapping[str, Mapping[str, Any]]
) -> Iterator[tuple[str, str]]:
    """(group name, AMI) for each auto scaling group's launch template version or launch
    configuration (mixed instances policies' templates and overrides too)."""
    configurations: dict[str, str] = {}
    for page in _pages(aws, "autoscaling", region, "describe_auto_scaling_groups"):
        for group in page.get("AutoScalingGroups", []):
            name = group["AutoScalingGroupName"]
            specs = [group.get("LaunchTemplate")]
            mixed = group.get("MixedInstancesPolicy", {}).get("LaunchTemplate", {})
            specs.append(mixed.get("LaunchTemplateSpecification"))
            specs += [o.get("LaunchTemplateSpecification") for o in mixed.get("Overrides", [])]
            for spec in filter(None, specs):
                ami_id = _template_version(templates, spec)
                if ami_id:
                    yield name, ami_id
            if group.get("LaunchConfigurationName"):
                configurations.setdefault(group["LaunchConfigurationName"], name)
    if configurations:
        names = sorted(configurations)
        for page in _pages(
            aws,
            "autoscaling",
            region,
            "describe_launch_configurations",
            LaunchConfigurationNames=names,
        ):
            for lc in page.get("LaunchConfigurations", []):
                group = configurations.get(lc["LaunchConfigurationName"], "")
                if lc.get("ImageId"):
                    yield group, lc["ImageId"]


def _template_version(templates: Mapping[str, Mapping[str, Any]], spec: Mapping[str, Any]) -> str:
    """The AMI of the launch template version an auto scaling group names ("" if none)."""
    template = templates.get(spec.get("LaunchTemplateId", ""))
    if template is None:  # named by name
        template = next(
            (t for t in templates.values() if t["name"] == spec.get("LaunchTemplateName")), None
        )
    if template is None:
        return ""
    version = str(spec.get("Version") or "$Default")
    version = template.get(version, version)
    return str(template["versions"].get(version, ""))


def _goldsmith_parameters(aws: Aws, region: str) -> Iterator[tuple[str, str]]:
    """(name, AMI) of every parameter under /goldsmith/ whose value is an AMI id."""
    for page in _pages(aws, "ssm", region, "get_parameters_by_path", Path=SSM_ROOT, Recursive=True):
        for p in page.get("Parameters", []):
            if str(p.get("Value", "")).startswith("ami-"):
                yield p["Name"], p["Value"]


# --- judging ------------------------------------------------------------------------


def judge(
    builds: list[Build],
    users: Mapping[str, list[str]],
    rules: Rules,
    now: datetime | None = None,
) -> list[Verdict]:
    """What happens to each build (`builds` newest first), and why."""
    now = now or datetime.now(UTC)
    verdicts: list[Verdict] = []
    rank = 0  # among the builds that can be dated
    for build in builds:
        built = build.built_at
        keeps: list[str] = []
        if built is None:
            keeps.append("its build id carries no time: it cannot be ranked")
        elif rank == 0:
            keeps.append("newest proven build")
        used = [u for ami_id in build.ami_ids.values() for u in users.get(ami_id, [])]
        if used:
            keeps.append("in use by " + ", ".join(used))
        excluded = build.excluded()
        if excluded is not None:
            keeps.append(f"excluded (tag {TAG_KEEP}={excluded!r})")
        pending = [
            f"{r} {i.get('State')}"
            for r, i in build.images.items()
            if i.get("State") != "available"
        ]
        if pending:
            keeps.append("not available: " + ", ".join(pending))
        why: list[str] = []
        old = True
        if built is not None:
            if rules.keep is not None:
                if rank < rules.keep:
                    old = False
                    why.append(f"within keep {rules.keep} (#{rank + 1})")
                else:
                    why.append(f"beyond keep {rules.keep} (#{rank + 1})")
            if rules.max_age_days is not None:
                age = now - built
                days = f"built {age / timedelta(days=1):.1f} days ago"
                if age <= timedelta(days=rules.max_age_days):
                    old = False
                    why.append(f"younger than {rules.max_age_days} days ({days})")
                else:
                    why.append(f"older than {rules.max_age_days} days ({days})")
            rank += 1
        if keeps:
            # The rule's own verdict is shown too, so a reader sees what protects it.
            if old and built is not None:
                keeps.append("otherwise pruned: " + ", ".join(why))
            verdicts.append(Verdict(build, False, keeps))
        else:
            verdicts.append(Verdict(build, old, why))
    return verdicts


def plan(
    aws: Aws, image: str, regions: Iterable[str], rules: Rules, now: datetime | None = None
) -> list[Verdict]:
    """Every build of `image` in `regions` with what the rules and its users make of it."""
    regions = list(dict.fromkeys(regions))
    return judge(find_builds(aws, image, regions), find_users(aws, regions), rules, now)


def table(verdicts: list[Verdict]) -> str:
    """The verdicts as an aligned text table, newest build first."""
    rows = [("build", "built", "AMIs", "action", "why")]
    for v in verdicts:
        built = v.build.built_at
        rows.append(
            (
                v.build.build_id,
                built.strftime("%Y-%m-%d %H:%M UTC") if built else "unknown",
                " ".join(f"{r}:{a}" for r, a in v.build.ami_ids.items()),
                v.action,
                "; ".join(v.reasons),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in rows
    )


# --- retiring -------------------------------------------------------------------------


def deprecate_at(now: datetime | None = None) -> datetime:
    """The soonest time EC2 accepts for a deprecation: the next whole minute (it refuses
    a time in the past and rounds seconds)."""
    now = now or datetime.now(UTC)
    return (now + timedelta(minutes=1)).replace(second=0, microsecond=0)


def apply(
    aws: Aws,
    image: str,
    verdicts: list[Verdict],
    *,
    topic: str = "",
    sleep: Callable[[float], None] = time.sleep,
) -> Pruned:
    """Retire every build the verdicts prune; say what was done and what was not.

    `topic` is the SNS topic told of each retired build.
    """
    done = Pruned()
    for verdict in verdicts:
        if not verdict.prune:
            continue
        build = verdict.build
        if _retire(aws, build, sleep, done):
            done.builds.append(build.build_id)
            reason = "; ".join(verdict.reasons)
            notify.send(
                aws, topic, notify.Event("pruned", image, build.build_id, build.ami_ids, reason)
            )
    log("prune", done.summary())
    return done


def _retire(aws: Aws, build: Build, sleep: Callable[[float], None], done: Pruned) -> bool:
    """Deprecate every AMI of `build`, then deregister each and delete its snapshots."""
    when = deprecate_at()
    for region, ami_id in build.ami_ids.items():
        try:
            aws.ec2(region).enable_image_deprecation(ImageId=ami_id, DeprecateAt=when)
        except GoldsmithError as err:
            if isinstance(err, AwsError) and err.code.startswith("InvalidAMIID"):
                continue  # deregistered already (by hand, or a prune that got that far)
            done.failed.append(
                f"{build.build_id}: not deprecated in {region} ({err}); nothing of it "
                "was deregistered"
            )
            return False
        done.deprecated.append(f"{region}:{ami_id}")
    complete = True
    for region, image in sorted(build.images.items()):
        ami_id = image["ImageId"]
        try:
            _deregister(aws, region, ami_id)
        except GoldsmithError as err:
            done.failed.append(
                f"{build.build_id}: {ami_id} not deregistered in {region} ({err}); "
                "its snapshots were kept"
            )
            complete = False
            continue
        done.deregistered.append(f"{region}:{ami_id}")
        for snapshot in amis.snapshots_of(image):
            try:
                _delete_snapshot(aws, region, snapshot, sleep)
            except GoldsmithError as err:
                done.failed.append(
                    f"{build.build_id}: snapshot {snapshot} of {ami_id} not deleted in "
                    f"{region} ({err})"
                )
                complete = False
                continue
            done.snapshots.append(f"{region}:{snapshot}")
    return complete


def _deregister(aws: Aws, region: str, ami_id: str) -> None:
    try:
        aws.ec2(region).deregister_image(ImageId=ami_id)
    except AwsError as err:
        if not err.code.startswith("InvalidAMIID"):
            raise  # (gone already: a previous prune got that far)


def _delete_snapshot(
    aws: Aws, region: str, snapshot: str, sleep: Callable[[float], None], attempts: int = 12
) -> None:
    for attempt in range(attempts):
        try:
            aws.ec2(region).delete_snapshot(SnapshotId=snapshot)
            return
        except AwsError as err:
            if err.code == "InvalidSnapshot.NotFound":
                return
            if err.code != SNAPSHOT_IN_USE or attempt == attempts - 1:
                raise
            sleep(5)
