"""One document for a pull request's validation run: what would rebake and why, and what
the proven builds kept here say about each image.

    build/report/pr-report.md    for people (the CI build's artifact, a PR comment)
    build/report/pr-report.json  the same facts, for machines

Per image and target: the plan (reuse or rebake, the inputs that changed), the last
proven build, its specs, the roles without specs, what changed against the build it
replaced (or the build proven as of a git ref), its SBOM and its CVE gate. Without
`validations` nothing was baked: an image's section then says so and names the last
proven build the plan found; what a build recorded is shown when its folder is here (a
local build, a CI cache). With them (goldsmith.validate, `./run report --bake`), each
image that would rebake has a local validation bake of the checkout, whose specs, SBOM
and CVE gate are shown, compared with a local bake of the commit its last proven build
was baked from. Only the two report files are written here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import outputs
from .catalogue import Catalogue
from .errors import GoldsmithError
from .paths import build_dir
from .settings import Settings

if TYPE_CHECKING:
    from .validate import Validation

MARKDOWN = "pr-report.md"
JSON = "pr-report.json"


def default_path(root: Path) -> Path:
    """Where the markdown goes unless told otherwise (the JSON twin sits beside it)."""
    return build_dir(root) / "report" / MARKDOWN


def plan_rows(
    root: Path, catalogue: Catalogue, target: str | None, settings: Settings
) -> list[dict[str, Any]]:
    """The plan (pipeline.plan_all's rows): every image and each of its targets, or, for
    one `target`, the images that list it (the others cannot be baked for it)."""
    from .pipeline import plan_all

    if target is None:
        return plan_all(root, settings=settings)
    rows: list[dict[str, Any]] = []
    for name, image in catalogue.images.items():
        if target in image.targets:
            rows += plan_all(root, image=name, target=target, settings=settings)
    return rows


@dataclass
class Report:
    """The facts (`data`, what the JSON holds) and each comparison's markdown."""

    data: dict[str, Any]
    diffs: dict[str, str] = field(default_factory=dict)  # "image/target" -> markdown

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2, sort_keys=True) + "\n"

    def to_markdown(self) -> str:
        return _markdown(self)

    def write(self, markdown: Path) -> tuple[Path, Path]:
        """Write the markdown to `markdown` and the JSON beside it; return both paths."""
        twin = markdown.with_suffix(".json")
        outputs.write_atomic(markdown, self.to_markdown())
        outputs.write_atomic(twin, self.to_json())
        return markdown, twin


def collect(
    root: Path,
    catalogue: Catalogue,
    rows: list[dict[str, Any]],
    *,
    git: dict[str, Any],
    base_ref: str | None = None,
    validations: dict[tuple[str, str], Validation] | None = None,
) -> Report:
    """The report for the plan `rows`, from what build/<image>/<target>/ holds.

    `git`: the checkout the run is on ({"sha", "dirty"}); `base_ref`: compare each build
    with the one proven as of this git ref instead of the build it replaced (without
    validation bakes; with them it is the reference where the plan finds none);
    `validations`: goldsmith.validate.run's, keyed (image, target)."""
    report = Report(
        {
            "format": 1,
            "git": git,
            "base_ref": base_ref,
            "validation_bake": validations is not None,
            "rebake": sorted({r["image"] for r in rows if r.get("action") != "reuse"}),
            "images": [],
        }
    )
    for row in rows:
        v = (validations or {}).get((row["image"], row["target"]))
        entry, diff_md = _entry(root, catalogue, row, base_ref, v)
        report.data["images"].append(entry)
        if diff_md is not None:
            report.diffs[f"{entry['image']}/{entry['target']}"] = diff_md
    return report


def _entry(
    root: Path,
    catalogue: Catalogue,
    row: dict[str, Any],
    base_ref: str | None,
    v: Validation | None = None,
) -> tuple[dict[str, Any], str | None]:
    image, target = row["image"], row["target"]
    img = catalogue.image(image)
    d = outputs.target_dir(root, image, target)
    manifest = _manifest(d / outputs.MANIFEST)
    # A validation bake's build (local) is what the specs, SBOM and gate are read from.
    baked = v.new.manifest if v is not None and v.new is not None else None
    where, shown = (outputs.target_dir(root, image, "local"), baked) if baked else (d, manifest)
    plan = {k: row.get(k) for k in ("action", "fingerprint", "last", "changed", "note")}
    build = None
    if manifest is not None:
        build = {
            "build_id": manifest.get("build_id"),
            "recorded": manifest.get("recorded"),
            "git": manifest.get("git"),
            "fingerprint": manifest.get("fingerprint"),
            "current": manifest.get("fingerprint") == row.get("fingerprint"),
        }
    last = row.get("last")
    if not last and build and not baked:  # (a validation bake's own build is not the last)
        last = f"build {build['build_id']}"
    if row.get("action") == "reuse":
        status = f"proven with these inputs: {last}; nothing to rebake"
    elif baked:
        status = (
            f"baked locally for validation in this run (build {baked.get('build_id')}); "
            f"last proven {target} build: {last or 'none'}"
        )
    elif v is not None and v.errors:
        status = f"the validation bake failed; last proven build: {last or 'none'}"
    elif v is not None and v.none:
        status = f"not baked in this run, {v.none}; last proven build: {last or 'none'}"
    else:
        status = f"not baked in this run; last proven build: {last or 'none'}"
    entry: dict[str, Any] = {
        "image": image,
        "target": target,
        "plan": plan,
        "status": status,
        "build": build,
        "specs": (shown or {}).get("specs"),
        "specs_build": (shown or {}).get("build_id"),
        "uncovered_roles": list(catalogue.role_map(img).uncovered),
        "sbom": _sbom(where, shown),
        "cve_gate": _cve_gate(shown, img.vulnerabilities is not None),
        "validation": v.to_dict() if v is not None else None,
    }
    if v is not None and not v.none:
        entry["changes"], diff_md = _validation_changes(v)
    else:
        entry["changes"], diff_md = _changes(root, image, target, manifest, base_ref)
    return entry, diff_md


def _validation_changes(v: Validation) -> tuple[dict[str, Any], str | None]:
    result = v.comparison
    if result is None:
        return {"none": v.missing or "; ".join(v.errors) or "no reference"}, None
    return _facts(result)


def _facts(result: outputs.Comparison) -> tuple[dict[str, Any], str]:
    """A comparison's facts for the JSON, and its markdown."""
    facts = {
        "old": result.old.describe(),
        "new": result.new.describe(),
        "changed": not result.diff.empty,
        "changes": result.diff.to_dict(),
    }
    return facts, result.to_markdown()


def _manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("build_id") else None


def _changes(
    root: Path, image: str, target: str, manifest: dict[str, Any] | None, base_ref: str | None
) -> tuple[dict[str, Any], str | None]:
    if manifest is None:
        return {"none": "no build recorded here to compare"}, None
    try:
        if base_ref:
            result = outputs.compare_at_ref(root, image, target, base_ref)
        else:
            result = outputs.compare(root, image, target)
    except GoldsmithError as err:  # NothingToCompare, or an inventory changed after its build
        return {"none": str(err)}, None
    return _facts(result)


def _sbom(d: Path, manifest: dict[str, Any] | None) -> dict[str, Any]:
    if manifest is None:
        return {"none": "no build recorded here"}
    entry = manifest.get("sbom")
    if not entry:
        return {"none": manifest.get("sbom_reason") or "the build recorded no SBOM"}
    path = d / entry.get("file", outputs.SBOM)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return {"none": f"{path.name} cannot be read: {err}"}
    return {
        "file": path.name,
        "format": entry.get("format"),
        "components": len(doc.get("components") or []),
    }


def _cve_gate(manifest: dict[str, Any] | None, has_policy: bool) -> dict[str, Any]:
    if not has_policy:
        return {"none": "no policy"}
    if manifest is None:
        return {"none": "a policy, but no build recorded here to check"}
    gate = manifest.get("cve_gate")
    if not gate:
        return {"none": manifest.get("cve_gate_reason") or "not run"}
    return gate


# --- markdown -------------------------------------------------------------------------------


def _markdown(report: Report) -> str:
    data = report.data
    git = data.get("git") or {}
    sha = str(git.get("sha") or "unknown")[:12]
    images = data["images"]
    out = ["# goldsmith: what this change does to the images", ""]
    head = f"Commit `{sha}`" + (" with uncommitted changes" if git.get("dirty") else "")
    rebake = data["rebake"]
    plan = f"would rebake {', '.join(rebake)}" if rebake else "nothing to rebake"
    out += [f"{head}. Plan: {plan}.", ""]
    if data.get("validation_bake"):
        out += [
            "Each image that would rebake was baked locally for validation (its specs ran "
            "inside the bake) and is compared with a local bake of the commit its last "
            "proven build was baked from"
            + (f", else of `{data['base_ref']}`" if data.get("base_ref") else "")
            + ": the same base and the same goldsmith on both sides.",
            "",
        ]
    elif data.get("base_ref"):
        out += [f"Changes are against the build proven as of `{data['base_ref']}`.", ""]
    out += [
        "| image | target | plan | specs | uncovered roles | SBOM | CVE gate |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in images:
        out.append(
            f"| {e['image']} | {e['target']} | {e['plan']['action']} | {_specs_short(e)} "
            f"| {', '.join(e['uncovered_roles']) or '—'} | {_sbom_line(e['sbom'])} "
            f"| {_gate_short(e['cve_gate'])} |"
        )
    out.append("")
    for e in images:
        out += _section(e, report.diffs.get(f"{e['image']}/{e['target']}"))
    return "\n".join(out).rstrip() + "\n"


def _section(e: dict[str, Any], diff_md: str | None) -> list[str]:
    plan = e["plan"]
    out = [f"## {e['image']} ({e['target']}): {plan['action']}", ""]
    out.append(f"- {e['status'][0].upper()}{e['status'][1:]}.")
    if plan.get("fingerprint"):
        out.append(f"- Fingerprint `{str(plan['fingerprint'])[:16]}`.")
    if plan.get("changed"):
        out.append(f"- Changed inputs: {', '.join(f'`{c}`' for c in plan['changed'])}.")
    if plan.get("note"):
        out.append(f"- Plan note: {plan['note']}")
    build = e["build"]
    if build is not None:
        git = build.get("git") or {}
        kept = f"- Build recorded here: {build['build_id']} ({build.get('recorded')}"
        kept += f", commit `{str(git.get('sha') or 'unknown')[:12]}`"
        kept += "" if build["current"] else ", its inputs differ from this change's"
        out.append(kept + ").")
    out += _validation_lines(e.get("validation"))
    out.append(f"- Specs: {_specs_long(e)}.")
    uncovered = e["uncovered_roles"]
    if uncovered:
        named = ", ".join(f"`{r}` (no tests/spec/{r}/)" for r in uncovered)
        out.append(f"- Uncovered roles: {named}.")
    else:
        out.append("- Uncovered roles: none.")
    out.append(f"- SBOM: {_sbom_line(e['sbom'])}.")
    out.append(f"- CVE gate: {_gate_long(e['cve_gate'])}.")
    out.append("")
    changes = e["changes"]
    if diff_md is not None:
        # The comparison's own headings, one level down, under this image's section.
        out += [f"#{line}" if line.startswith("#") else line for line in diff_md.splitlines()]
    else:
        out.append(f"Changes: nothing to compare ({changes['none']}).")
    out.append("")
    return out


def _validation_lines(v: dict[str, Any] | None) -> list[str]:
    if not v or "none" in v:
        return []
    out = []
    ref = v.get("reference")
    if ref:
        line = f"- Reference: a local bake of commit `{ref['commit'][:12]}`, {ref['describe']}"
        how = (v.get("reference_build") or {}).get("how")
        out.append(line + (f"; {how}." if how else "."))
        if ref.get("note"):
            out.append(f"- Reference note: {ref['note']}.")
    out += [f"- Validation FAILED: {err}" for err in v.get("errors") or []]
    return out


def _specs_short(e: dict[str, Any]) -> str:
    if (e.get("validation") or {}).get("errors"):
        return "bake failed"
    live = (e["specs"] or {}).get("live")
    if not live:
        return "—"
    failed = f", {live['failed']} failed" if live.get("failed") else ""
    return f"{live.get('passed', 0)} passed{failed}"


def _specs_long(e: dict[str, Any]) -> str:
    v = e.get("validation") or {}
    if v.get("errors") and not v.get("new"):
        return "the validation bake failed before its specs passed (see above)"
    specs = e["specs"] or {}
    live = specs.get("live")
    if not live:
        return "no build recorded here (the specs run inside a bake)"
    text = (
        f"{live.get('passed', 0)} passed, {live.get('failed', 0)} failed, "
        f"{live.get('skipped', 0)} skipped"
    )
    hygiene = specs.get("hygiene")
    if hygiene:
        text += f"; hygiene {hygiene.get('passed', 0)} passed, {hygiene.get('failed', 0)} failed"
    return f"{text} (build {e.get('specs_build') or e['build']['build_id']})"


def _sbom_line(sbom: dict[str, Any]) -> str:
    if "none" in sbom:
        return f"none ({sbom['none']})"
    return f"{sbom['components']} components ({sbom.get('format') or sbom['file']})"


def _gate_short(gate: dict[str, Any]) -> str:
    if "none" in gate:
        return "no policy" if gate["none"] == "no policy" else "not run"
    return "passed" if gate.get("ok") else "FAILED"


def _gate_long(gate: dict[str, Any]) -> str:
    if "none" in gate:
        return str(gate["none"])
    text = f"{'passed' if gate.get('ok') else 'FAILED'} ({gate.get('policy')}, "
    text += f"fail on {gate.get('fail_on')}, release {gate.get('release')})"
    if gate.get("allowed"):
        text += f"; allowed by the policy: {', '.join(gate['allowed'])}"
    if gate.get("expired_allows"):
        text += f"; expired allow entries: {', '.join(gate['expired_allows'])}"
    counts = [(gate.get("below_threshold"), "below the threshold"), (gate.get("open"), "open")]
    text += "".join(f"; {n} {what}" for n, what in counts if n)
    return text
