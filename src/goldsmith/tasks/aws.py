"""Tasks of the AWS side: `twin.*` and `aws.*`. They parse arguments and call the package.

./run twin.up | twin.down | twin.env | twin.reset
./run aws.publish --image web [--target twin]
./run aws.reap --image web --build-id ID [--failed] [--sweep] [--dry-run]
./run aws.prune --image web [--keep N] [--max-age DAYS] [--apply]
./run aws.promote --image web --to stable [--build-id ID] [--force]
"""

from __future__ import annotations

from pathlib import Path

from invoke import Collection, task

from .. import outputs
from ..aws import promote as promoting
from ..aws import prune as pruning
from ..aws import publish as publishing
from ..aws import reaper, report, ssm, twin
from ..aws.clients import Aws
from ..catalogue import Retention, load
from ..errors import GoldsmithError
from ..paths import project_root
from .common import require_image, settings, user_errors


def _aws_for(target: str, root: Path) -> Aws:
    if target == "twin":
        return twin.aws(root)
    if target == "aws":
        return Aws()
    raise GoldsmithError(f"--target {target!r}: choose aws or twin")


def _aws_settings(root: Path, image: str | None, task: str):  # -> catalogue.AwsSettings
    catalogue = load(root / "images.yml")
    image = require_image(catalogue, image, task)
    aws_settings = catalogue.images[image].aws
    if aws_settings is None:
        raise GoldsmithError(f"images.yml: images.{image} has no 'aws' section")
    return image, aws_settings


@task
@user_errors
def up(c):
    """Start the AWS twin (moto on loopback), or reuse the running one; print its endpoint."""
    t = twin.up(project_root())
    print(t.endpoint)


@task
@user_errors
def down(c):
    """Stop the AWS twin (its state goes with it)."""
    if not twin.down(project_root()):
        print("the twin was not running")


@task(help={"region": "AWS_DEFAULT_REGION to print (default eu-west-1)"})
@user_errors
def env(c, region="eu-west-1"):
    """Print `export` lines that point boto3, the AWS CLI and Packer at the running twin."""
    for k, v in twin.env(project_root(), region).items():
        print(f"export {k}={v}")


@task
@user_errors
def reset(c):
    """Forget everything the twin holds (the seeded source AMIs come back)."""
    twin.reset(project_root())


@task(
    help={
        "image": "image to publish (a key of `images` in images.yml)",
        "target": "aws (real AWS, the default) or twin (the local moto)",
        "manifest": "goldsmith's build manifest; default build/<image>/<target>/manifest.json",
    }
)
@user_errors
def publish(c, image=None, target="aws", manifest=None):
    """Copy a baked AMI to its regions, share it, point SSM at it, write the AWS report."""
    from ..aws.amis import Wait
    from ..targets.amazon import publish_manifest

    root = project_root()
    image, aws_settings = _aws_settings(root, image, "aws.publish")
    path = Path(manifest) if manifest else outputs.target_dir(root, image, target) / "manifest.json"
    if not path.is_file():
        raise GoldsmithError(
            f"{path}: no manifest; bake first with `./run build --image {image} --target {target}`"
        )
    provenance, _ = publishing.from_build_manifest(path)
    if provenance.image != image:
        raise GoldsmithError(f"{path}: image is {provenance.image!r}, not {image!r}")
    wait = Wait(timeout_s=settings(c).ami_wait_seconds)
    publish_manifest(_aws_for(target, root), aws_settings, path, root, wait=wait)
    md, js = path.parent / report.MARKDOWN, path.parent / report.JSON
    print(md.read_text())
    print(f"report: {md.relative_to(root)}, {js.relative_to(root)}")


@task(
    help={
        "image": "image whose regions to search (images.yml)",
        "build_id": "the build whose leftovers go (tag goldsmith:build-id)",
        "target": "aws (the default) or twin",
        "failed": "also deregister the build's AMIs and delete their snapshots",
        "sweep": "also delete what dead builds left (older than 8 h): only what goldsmith "
        "tagged and the Packer groups and key pairs of tagged instances",
        "dry_run": "only say what would be deleted",
    }
)
@user_errors
def reap(c, image=None, build_id=None, target="aws", failed=False, sweep=False, dry_run=False):
    """Delete what a build left in AWS: instances, key pairs, security groups (and AMIs)."""
    root = project_root()
    image, aws_settings = _aws_settings(root, image, "aws.reap")
    done = reaper.reap(
        _aws_for(target, root),
        list(aws_settings.regions),
        build_id,
        images=failed,
        sweep=sweep,
        dry_run=dry_run,
    )
    print(done.summary())


def _whole_number(value: str | int | None, flag: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise GoldsmithError(f"{flag} {value!r}: give a whole number") from None


@task(
    help={
        "image": "image whose old builds to retire (images.yml)",
        "target": "aws (the default) or twin",
        "keep": "keep the newest N builds (overrides images.yml aws.retention.keep)",
        "max_age": "retire builds older than DAYS (overrides aws.retention.max_age_days)",
        "apply": "do it: deprecate, deregister, delete the snapshots (default: only say what)",
    }
)
@user_errors
def prune(c, image=None, target="aws", keep=None, max_age=None, apply=False):
    """Retire old builds of an image in every region; a dry run unless --apply."""
    root = project_root()
    image, aws_settings = _aws_settings(root, image, "aws.prune")
    configured = aws_settings.retention or Retention()
    keep_n = _whole_number(keep, "--keep")
    days = _whole_number(max_age, "--max-age")
    rules = pruning.Rules(
        keep=configured.keep if keep_n is None else keep_n,
        max_age_days=configured.max_age_days if days is None else days,
    )
    aws = _aws_for(target, root)
    regions = list(aws_settings.regions)
    verdicts = pruning.plan(aws, image, regions, rules)
    doomed = [v for v in verdicts if v.prune]
    print(f"image {image} in {', '.join(regions)}; rules: {rules}")
    print(pruning.table(verdicts) if verdicts else "no builds of this image")
    if not apply:
        print(f"dry run: nothing changed; {len(doomed)} build(s) would be pruned (--apply)")
        return
    done = pruning.apply(aws, image, verdicts, topic=aws_settings.notify)
    print(done.summary())
    if done.failed:
        raise GoldsmithError(
            f"the prune of {image} did not finish (above: what was and was not done); "
            "run it again to finish"
        )


@task(
    help={
        "image": "image to promote (images.yml)",
        "to": "the channel: /goldsmith/<image>/<channel> (lowercase letters, digits, dashes)",
        "build_id": "the build to promote (default: the one `latest` points at)",
        "target": "aws (the default) or twin",
        "force": "move the channel even to an older build",
    }
)
@user_errors
def promote(c, image=None, to=None, build_id=None, target="aws", force=False):
    """Point a channel of an image at a proven build, in every region or none."""
    root = project_root()
    image, aws_settings = _aws_settings(root, image, "aws.promote")
    if not to:
        raise GoldsmithError(f"--to is required: ./run aws.promote --image {image} --to CHANNEL")
    done = promoting.promote(
        _aws_for(target, root),
        image,
        list(aws_settings.regions),
        to,
        latest=ssm.parameter_name(aws_settings.ssm_parameter, image),
        build_id=build_id,
        force=force,
    )
    print(done.summary())


def twin_collection() -> Collection:
    """`./run twin.up`, `twin.down`, `twin.env`, `twin.reset`."""
    return Collection("twin", up, down, env, reset)


def aws_collection() -> Collection:
    """`./run aws.publish`, `aws.reap`, `aws.prune`, `aws.promote`."""
    return Collection("aws", publish, reap, prune, promote)
