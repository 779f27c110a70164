"""The publish report: markdown for a pull request or CodeBuild, JSON for machines."""

from __future__ import annotations

import json
from pathlib import Path

from .publish import PublishResult

MARKDOWN = "aws-report.md"
JSON = "aws-report.json"


def render_markdown(result: PublishResult) -> str:
    """A short markdown summary: provenance, then one row per region."""
    roles = ", ".join(f"`{r}`" for r in result.roles) or "none"
    lines = [
        f"## AMI `{result.image}` published",
        "",
        f"- git sha: `{result.git_sha}`",
        f"- fingerprint: `{result.fingerprint}`",
        f"- build id: `{result.build_id}`",
        f"- roles: {roles}",
        f"- built in {result.source_region} as `{result.source_ami}` "
        f"(Packer run `{result.packer_run_uuid}`)",
        f"- published in {result.seconds:.0f}s",
        "",
        "| region | AMI | snapshots | shared with | SSM parameter | was |",
        "|---|---|---|---|---|---|",
    ]
    for region, r in sorted(result.regions.items()):
        shared = ", ".join(r.shared_with) or "nobody"
        snaps = ", ".join(f"`{s}`" for s in r.snapshots) or "none"
        previous = f"`{r.ssm_previous}`" if r.ssm_previous else "unset"
        lines.append(
            f"| {region} | `{r.ami_id}` | {snaps} | {shared} | `{r.ssm_parameter}` | {previous} |"
        )
    return "\n".join(lines) + "\n"


def write(result: PublishResult, out_dir: Path) -> tuple[Path, Path]:
    """Write aws-report.md and aws-report.json into `out_dir` (build/<image>/); return both."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / MARKDOWN
    js = out_dir / JSON
    md.write_text(render_markdown(result))
    js.write_text(json.dumps(result.to_json(), indent=2, sort_keys=True) + "\n")
    return md, js
