"""Tasks of the CI stack (aws/ci-stack.yml). They parse arguments and call goldsmith.aws.stack.

./run ci.deploy [--target aws|twin] [--region R] [--stack-name N] [--repository-url URL] ...
"""

from __future__ import annotations

from invoke import Collection, task

from ..aws import stack, twin
from ..aws.clients import Aws
from ..errors import GoldsmithError
from ..paths import project_root
from .common import user_errors


@task(
    help={
        "target": "aws (real AWS with your admin credentials, the default) or twin (the local "
        "moto, as its account's root)",
        "region": "the build region, where the CI runs (default: the images' first region); "
        "the images' other regions get the AMI key",
        "stack_name": "CloudFormation stack name (default goldsmith-ci)",
        "repository_url": "HTTPS clone URL of the repository CodeBuild builds",
        "branch": "branch merges go to and pull requests target (default: the template's, main)",
        "compute_type": "CodeBuild compute type (e.g. BUILD_GENERAL1_LARGE)",
        "build_image": "CodeBuild image (default: the template's)",
        "log_retention_days": "days the build logs are kept",
        "artifact_retention_days": "days build artifacts are kept",
    }
)
@user_errors
def deploy(
    c,
    target="aws",
    region=None,
    stack_name=stack.DEFAULT_STACK_NAME,
    repository_url=None,
    branch=None,
    compute_type=None,
    build_image=None,
    log_retention_days=None,
    artifact_retention_days=None,
):
    """Create or update the CI stack (CodeBuild projects, roles, logs, bucket, topic, AMI key)
    in the build region, and its AMI key in the images' other regions; print the outputs."""
    root = project_root()
    if target == "twin":
        admin = twin.admin_aws(root)
    elif target == "aws":
        admin = Aws()
    else:
        raise GoldsmithError(f"--target {target!r}: choose aws or twin")
    regions = stack.image_regions(root)
    if region:
        regions = [region, *(r for r in regions if r != region)]
    overrides = {
        "RepositoryUrl": repository_url,
        "Branch": branch,
        "ComputeType": compute_type,
        "BuildImage": build_image,
        "LogRetentionDays": log_retention_days,
        "ArtifactRetentionDays": artifact_retention_days,
    }
    params = {
        **stack.catalogue_parameters(root),
        **{k: str(v) for k, v in overrides.items() if v is not None},
    }
    for done in stack.deploy_all(lambda _region: admin, regions, stack_name, root, params):
        print(f"{done.stack_name} in {done.region}: {done.action} ({done.status})")
        for key, value in sorted(done.outputs.items()):
            print(f"  {key}: {value}")


def ci_collection() -> Collection:
    """`./run ci.deploy`."""
    return Collection("ci", deploy)
