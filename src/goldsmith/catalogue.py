"""The image catalogue (`images.yml`): loaded and validated before anything starts.

The schema is documented in the header of `images.yml`. Every problem is reported at
once, one per line, as `<file>:<line>: <dotted.key.path>: <problem>`, so a person
fixes the whole file in one go and nothing is built from a half-valid catalogue.

Keys with defaults (all others are required):
  bases.<name>.mirror      http://deb.debian.org/debian   (debootstrap)
  bases.<name>.disk_size   4G
  images.<name>.aws.share_with     []
  images.<name>.aws.encrypt_boot   true
  images.<name>.aws.kms_key_id     ""    (each region's default EBS key, aws/ebs)
  images.<name>.aws.spot           false
  images.<name>.aws.retention      none  (`./run aws.prune` then needs --keep or --max-age)
  images.<name>.aws.notify         the top-level `notifications.notify`, or none
`images.<name>.aws` is required when the image has the `aws` or `twin` target.
Top-level keys starting with `x-` are ignored: a place for shared anchors.

`vulnerabilities:` (top level: every image; or `images.<name>.vulnerabilities`, which
replaces it for that image, `false` for none) is the CVE gate's policy, checked when
the catalogue loads (goldsmith.cvegate.parse_policy): `tracker` (the security tracker
JSON, relative to the project; the `cve_tracker` setting overrides it), `fail_on`,
`release`, `fail_on_open`, `allow`. An image without a policy has no gate.

`aws.kms_key_id` is one of (KMS keys are regional: every region an AMI is copied to
needs a key of its own once any key is set, or the copy silently gets the default key):
  ""                          the default aws/ebs key in each region
  alias/<name>, or its ARN    the alias of that name in each region
  mrk-<id>, or its ARN        a multi-region key (its replica in each region)
  <key id>, or a key's ARN    a single-region key: only for an image with one region
  {<region>: <key>, ...}      one key per region, exactly the image's regions
`aws.retention: {keep: N, max_age_days: D}` is what `./run aws.prune` retires (both
positive whole numbers, at least one of them; its --keep/--max-age override them).
`aws.notify` (or the top-level `notifications: {notify: ...}` for every image) is the
ARN of an SNS topic or an EventBridge event bus that build results (published, failed,
pruned) are sent to.

An image shared with other accounts (`share_with`) needs a customer-managed key: they
cannot launch an AMI encrypted with the owner's default aws/ebs key.

An image names either a `base` or a `parent` image (a layered image): a child bakes from
its parent's proven artifact on the same target, so its targets are among its parent's,
its `aws` section has no `source_ami` (the parent's AMI is the source), and it inherits
the root ancestor's base (disk size, kind). Parents form no cycle.

Line numbers come from the YAML nodes (`yaml.compose`), so anchors and merge keys
(`<<: *aws`) work and a merged value is reported where it is written.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import cvegate, roles, targets
from .errors import GoldsmithError

KINDS = ("debootstrap", "cloud-image")
TARGETS = targets.names()
AWS_TARGETS = targets.needing("aws")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_DISK_SIZE = "4G"

# Names end up in file names, AMI names, tags and SSM parameter paths.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
DISK_SIZE_RE = re.compile(r"^[1-9][0-9]*[MGT]$")
SUITE_RE = re.compile(r"^[a-z][a-z0-9.-]*$")
URL_RE = re.compile(r"^(https?|file)://\S+$")
MIRROR_RE = re.compile(r"^https?://\S+$")
CHECKSUM_RE = re.compile(
    r"^(md5:[0-9a-f]{32}|sha1:[0-9a-f]{40}|sha256:[0-9a-f]{64}|"
    r"sha512:[0-9a-f]{128}|file:\S+)$",
    re.IGNORECASE,
)
REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]+$")
ACCOUNT_RE = re.compile(r"^[0-9]{12}$")
# Owners of a source AMI: an account id or one of the aliases EC2 accepts.
OWNER_ALIASES = ("self", "amazon", "aws-marketplace")
INSTANCE_TYPE_RE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$")
KMS_KEY_RE = re.compile(
    r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32}|"
    r"alias/[A-Za-z0-9/_-]+|arn:aws[a-z-]*:kms:\S+)$"
)
KMS_ARN_RE = re.compile(r"^(arn:aws[a-z-]*:kms):([a-z0-9-]+):([0-9]{12}):(key|alias)/(.+)$")
DEFAULT_EBS_ALIAS = "alias/aws/ebs"
SSM_RE = re.compile(r"^(/[A-Za-z0-9_.-]+)+$")
# Where build results go (goldsmith.aws.notify sends by the ARN's service).
NOTIFY_RE = re.compile(
    r"^arn:aws[a-z-]*:(sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,256}|"
    r"events:[a-z0-9-]+:[0-9]{12}:event-bus/[A-Za-z0-9._/-]{1,256})$"
)
NOTIFY_RULE = (
    "an SNS topic ARN like 'arn:aws:sns:eu-west-1:123456789012:goldsmith-builds' or an "
    "EventBridge event bus ARN like "
    "'arn:aws:events:eu-west-1:123456789012:event-bus/goldsmith-builds'"
)
RETENTION_KEYS = ("keep", "max_age_days")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the catalogue, where it is written."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class CatalogueError(GoldsmithError):
    """The catalogue is invalid; `str()` lists every problem, one per line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class Base:
    """What an image starts from. Keys that do not apply to `kind` are ""."""

    name: str
    kind: str
    suite: str
    mirror: str
    disk_size: str
    url: str
    checksum: str


@dataclass(frozen=True)
class Retention:
    """Which old builds `./run aws.prune` retires (None: that rule is not set)."""

    keep: int | None = None  # keep the newest N builds
    max_age_days: int | None = None  # retire builds older than this


@dataclass(frozen=True)
class AwsSettings:
    """How an image is baked and published on AWS (the `aws` and `twin` targets)."""

    source_ami_owners: tuple[str, ...]
    source_ami_name: str
    ssh_username: str
    instance_type: str
    regions: tuple[str, ...]
    share_with: tuple[str, ...]
    ssm_parameter: str
    encrypt_boot: bool
    spot: bool
    # {region: KMS key} for every region, or {} for each region's default aws/ebs key.
    kms_key_ids: dict[str, str] = field(default_factory=dict)
    retention: Retention | None = None
    notify: str = ""  # SNS topic or EventBridge event bus ARN for build results ("": none)

    def kms_key_for(self, region: str) -> str:
        """The KMS key for volumes and copies in `region` ("" is the default aws/ebs key)."""
        return self.kms_key_ids.get(region, "")


@dataclass(frozen=True)
class Vulnerabilities:
    """An image's CVE gate: its policy, and the tracker data images.yml names (if any)."""

    policy: cvegate.Policy
    tracker: Path | None  # absolute; None: the `cve_tracker` setting must name one
    where: str  # the key that holds it ("images.web.vulnerabilities"), for messages


@dataclass(frozen=True)
class Image:
    """One image goldsmith can bake.

    `parent`: the image it is layered on (None for an image baked from its `base`);
    `base` is then the root ancestor's base.
    """

    name: str
    base: Base
    playbook: Path
    targets: tuple[str, ...]
    aws: AwsSettings | None
    parent: str | None = None
    # The CVE gate (its own or the catalogue's shared one); None: no gate.
    vulnerabilities: Vulnerabilities | None = None


@dataclass(frozen=True)
class Catalogue:
    """Every base and image declared in the catalogue file."""

    path: Path
    bases: dict[str, Base]
    images: dict[str, Image]
    # Where `images:` is written, so an unknown image name can be reported there.
    images_line: int = field(default=0, compare=False, repr=False)
    # Each playbook, resolved once while loading (plays, roles, specs): a build uses this.
    role_maps: dict[Path, roles.RoleMap] = field(default_factory=dict, compare=False, repr=False)

    def role_map(self, image: Image) -> roles.RoleMap:
        """The roles and specs of `image`'s playbook, as resolved when the catalogue loaded."""
        return self.role_maps[image.playbook]

    def ancestors(self, image: Image) -> list[Image]:
        """`image`'s parent, its parent's parent, ... (nearest first; [] for a base image)."""
        chain: list[Image] = []
        while image.parent is not None:
            image = self.images[image.parent]
            chain.append(image)
        return chain

    def layers(self, image: Image) -> list[Image]:
        """The images whose playbooks made `image`, root ancestor first, `image` last."""
        return [*reversed(self.ancestors(image)), image]

    def children(self, name: str) -> list[Image]:
        return [i for i in self.images.values() if i.parent == name]

    def image(self, name: str) -> Image:
        """The image called `name`; a CatalogueError listing the known names otherwise."""
        if name in self.images:
            return self.images[name]
        known = ", ".join(sorted(self.images)) or "none"
        hint = _suggest(name, self.images)
        raise CatalogueError(
            [
                Problem(
                    _display(self.path),
                    self.images_line,
                    f"images.{name}",
                    f"no such image{hint}; images in the catalogue: {known}",
                )
            ]
        )


# --- reading nodes ----------------------------------------------------------------------


class _Node:
    """A YAML node with the dotted path it was reached by."""

    def __init__(self, node: yaml.Node, path: str, key_line: int = 0) -> None:
        self.node = node
        self.path = path
        self._key_line = key_line

    @property
    def line(self) -> int:
        """Where the value starts."""
        return self.node.start_mark.line + 1

    @property
    def key_line(self) -> int:
        """Where its key is: a mapping's first entry may be lines below its name."""
        return self._key_line or self.line


class _Validator:
    """Walks the composed YAML, converting values and collecting problems."""

    def __init__(self, file: Path) -> None:
        self.file = _display(file)
        self.problems: list[Problem] = []
        self._constructor = yaml.SafeLoader("")

    def problem(self, line: int, path: str, message: str) -> None:
        self.problems.append(Problem(self.file, line, path, message))

    def value(self, n: _Node) -> Any:
        return self._constructor.construct_object(n.node, deep=True)

    def mapping(
        self,
        n: _Node,
        required: tuple[str, ...],
        optional: tuple[str, ...] = (),
        what: str = "a mapping",
        elsewhere: dict[str, str] | None = None,
    ) -> dict[str, tuple[int, _Node]] | None:
        """The entries of a mapping node as {key: (key line, value node)}; None if not one.

        Unknown keys (with a did-you-mean) and missing required keys are reported here;
        `elsewhere` explains keys that are valid in another case (another base kind).
        """
        entries = self.entries(n, what)
        if entries is not None:
            self.check_keys(n, entries, required, optional, elsewhere)
        return entries

    def check_keys(
        self,
        n: _Node,
        entries: dict[str, tuple[int, _Node]],
        required: tuple[str, ...],
        optional: tuple[str, ...],
        elsewhere: dict[str, str] | None = None,
    ) -> None:
        """Report unknown keys (with a did-you-mean) and missing required keys."""
        allowed = (*required, *optional)
        for key, (line, _) in entries.items():
            if elsewhere and key in elsewhere and key not in allowed:
                self.problem(line, _join(n.path, key), elsewhere[key])
            elif key not in allowed:
                hint = _suggest(key, allowed)
                self.problem(
                    line, _join(n.path, key), f"unknown key{hint}; allowed: " + ", ".join(allowed)
                )
        for key in required:
            if key not in entries:
                self.problem(n.key_line, n.path, f"missing required key {key!r}")

    def entries(self, n: _Node, what: str = "a mapping") -> dict[str, tuple[int, _Node]] | None:
        if not isinstance(n.node, yaml.MappingNode):
            self.problem(n.line, n.path, f"must be {what}, not {_kind_of(n.node)}")
            return None
        node = n.node
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            # Merge keys are expanded below; duplicates written out are a mistake YAML hides.
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = str(key_node.value)
            if key in seen:
                self.problem(
                    key_node.start_mark.line + 1,
                    _join(n.path, key),
                    f"duplicate key (first at line {seen[key]})",
                )
            seen.setdefault(key, key_node.start_mark.line + 1)
        try:
            self._constructor.flatten_mapping(node)
        except yaml.MarkedYAMLError as e:
            self.problem(_mark_line(e), n.path, str(e.problem))
            return None
        out: dict[str, tuple[int, _Node]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.problem(key_node.start_mark.line + 1, n.path, "keys must be plain names")
                continue
            key = str(key_node.value)
            # flatten_mapping puts merged entries first: later (written) ones win.
            line = key_node.start_mark.line + 1
            out[key] = (line, _Node(value_node, _join(n.path, key), line))
        return out

    def string(
        self, n: _Node, pattern: re.Pattern | None = None, rule: str = "", allow_empty: bool = False
    ) -> str | None:
        if not isinstance(n.node, yaml.ScalarNode):
            self.problem(n.line, n.path, f"must be a string, not {_kind_of(n.node)}")
            return None
        v = self.value(n)
        if v is None:
            self.problem(n.line, n.path, "must be a string, not empty")
            return None
        if not isinstance(v, str):
            self.problem(
                n.line,
                n.path,
                f"must be a string, not {_kind_of(n.node)} {n.node.value!r} "
                f'(quote it: "{n.node.value}")',
            )
            return None
        if not v and not allow_empty:
            self.problem(n.line, n.path, "must not be empty")
            return None
        if v and pattern is not None and not pattern.match(v):
            self.problem(n.line, n.path, f"{v!r} is not {rule}")
            return None
        return v

    def boolean(self, n: _Node) -> bool | None:
        v = self.value(n) if isinstance(n.node, yaml.ScalarNode) else None
        if not isinstance(v, bool):
            self.problem(
                n.line,
                n.path,
                f"must be true or false, not {n.node.value!r}"
                if isinstance(n.node, yaml.ScalarNode)
                else f"must be true or false, not {_kind_of(n.node)}",
            )
            return None
        return v

    def strings(
        self, n: _Node, check: Callable[[_Node], str | None], non_empty: bool = False
    ) -> tuple[str, ...] | None:
        """A list of strings, each checked by `check`; duplicates are reported."""
        if not isinstance(n.node, yaml.SequenceNode):
            self.problem(n.line, n.path, f"must be a list, not {_kind_of(n.node)}")
            return None
        if non_empty and not n.node.value:
            self.problem(n.line, n.path, "must list at least one value")
            return None
        out: list[str] = []
        ok = True
        for i, item in enumerate(n.node.value):
            v = check(_Node(item, f"{n.path}[{i}]"))
            if v is None:
                ok = False
            elif v in out:
                self.problem(item.start_mark.line + 1, f"{n.path}[{i}]", f"{v!r} is listed twice")
                ok = False
            else:
                out.append(v)
        return tuple(out) if ok else None


# --- the schema ---------------------------------------------------------------------------


def load(path: Path) -> Catalogue:
    """Load and validate the catalogue at `path`; the project root is `path.parent`."""
    path = Path(path)
    root = path.parent.resolve()
    v = _Validator(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise CatalogueError([Problem(v.file, 0, "", f"cannot read: {e.strerror}")]) from None
    try:
        doc = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        detail = f"{e.context}: {e.problem}" if e.context else str(e.problem)
        raise CatalogueError(
            [Problem(v.file, _mark_line(e), "", f"not valid YAML: {detail}")]
        ) from None
    if doc is None:
        raise CatalogueError(
            [Problem(v.file, 1, "", "the catalogue is empty; it needs 'bases' and 'images'")]
        )
    # Top-level keys starting with "x-" are free (as in Compose files): a place for the
    # anchors that entries share (`x-aws: &aws`, merged with `<<: *aws`).
    extensions: tuple[str, ...] = ()
    if isinstance(doc, yaml.MappingNode):
        extensions = tuple(
            str(k.value) for k, _ in doc.value if str(getattr(k, "value", "")).startswith("x-")
        )
    top = v.mapping(
        _Node(doc, ""),
        required=("bases", "images"),
        optional=("vulnerabilities", "notifications", *extensions),
        what="a mapping of 'bases' and 'images'",
    )
    if top is None:
        raise CatalogueError(v.problems)
    shared = (
        _vulnerabilities(v, top["vulnerabilities"][1], root) if "vulnerabilities" in top else None
    )
    notify = _notifications(v, top["notifications"][1]) if "notifications" in top else ""
    bases: dict[str, Base] = {}
    if "bases" in top:
        for name, _line, n in _named(v, top["bases"][1], "bases"):
            base = _base(v, name, n)
            if base is not None:
                bases[name] = base
    images: dict[str, Image] = {}
    images_line = top["images"][0] if "images" in top else 0
    resolved: dict[Path, roles.RoleMap | None] = {}
    if "images" in top:
        base_names = _declared(top, "bases")
        image_names = _declared(top, "images")
        parents: dict[str, _Node] = {}
        for name, _line, n in _named(v, top["images"][1], "images"):
            image = _image(
                v, name, n, root, bases, base_names, image_names, resolved, parents, shared
            )
            if image is not None:
                images[name] = image
        images = _layered(v, images, parents)
    if v.problems:
        raise CatalogueError(sorted(v.problems, key=lambda p: p.line))
    if notify:  # the shared topic, for images that name none of their own
        images = {
            n: dataclasses.replace(i, aws=dataclasses.replace(i.aws, notify=notify))
            if i.aws is not None and not i.aws.notify
            else i
            for n, i in images.items()
        }
    role_maps = {k: m for k, m in resolved.items() if m is not None}
    return Catalogue(
        path=path, bases=bases, images=images, images_line=images_line, role_maps=role_maps
    )


def _named(v: _Validator, n: _Node, what: str) -> Iterator[tuple[str, int, _Node]]:
    """The entries of `bases`/`images`, with names checked."""
    entries = v.entries(n, f"a mapping of {what} by name")
    if entries is None:
        return
    if not entries:
        v.problem(n.line, n.path, f"declares no {what}")
    for name, (line, value) in entries.items():
        if not NAME_RE.match(name):
            v.problem(
                line,
                value.path,
                f"name {name!r} must be lower-case letters, digits, "
                "'-' and '_', starting with a letter or digit",
            )
            continue
        yield name, line, value


def _declared(top: dict[str, tuple[int, _Node]], key: str) -> set[str]:
    """Names declared under `key`, valid or not, so one bad base is not reported twice."""
    if key not in top:
        return set()
    node = top[key][1].node
    if not isinstance(node, yaml.MappingNode):
        return set()
    return {str(k.value) for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


BASE_KEYS = {
    "debootstrap": (("kind", "suite"), ("mirror", "disk_size")),
    "cloud-image": (("kind", "url", "checksum"), ("disk_size",)),
}


def _base(v: _Validator, name: str, n: _Node) -> Base | None:
    before = len(v.problems)
    entries = v.entries(n)
    if entries is None:
        return None
    kind = None
    if "kind" in entries:
        kind_node = entries["kind"][1]
        kind = v.string(kind_node)
        if kind is not None and kind not in KINDS:
            v.problem(
                kind_node.line,
                kind_node.path,
                f"unknown kind {kind!r}{_suggest(kind, KINDS)}; kinds: {', '.join(KINDS)}",
            )
            kind = None
    if kind is None:
        # Without a kind the other keys cannot be judged; only unknown ones are reported.
        every = tuple(dict.fromkeys(k for r, o in BASE_KEYS.values() for k in (*r, *o)))
        v.check_keys(n, entries, ("kind",), tuple(k for k in every if k != "kind"))
        return None
    required, optional = BASE_KEYS[kind]
    # Keys that belong to the other kind are named as such, not as unknown.
    elsewhere = {
        key: f"only for kind {other!r}; this base is kind {kind!r}"
        for other, keys in BASE_KEYS.items()
        if other != kind
        for key in (*keys[0], *keys[1])
    }
    v.check_keys(n, entries, required, optional, elsewhere)

    def get(key: str, default: str = "", **kw: Any) -> str | None:
        return v.string(entries[key][1], **kw) if key in entries else default

    values = {
        "suite": get("suite", pattern=SUITE_RE, rule="a Debian suite name like 'bookworm'"),
        "mirror": get(
            "mirror",
            DEFAULT_MIRROR if kind == "debootstrap" else "",
            pattern=MIRROR_RE,
            rule="an http(s):// URL",
        ),
        "disk_size": get(
            "disk_size",
            DEFAULT_DISK_SIZE,
            pattern=DISK_SIZE_RE,
            rule="a size with a unit, like '4G' or '512M'",
        ),
        "url": get("url", pattern=URL_RE, rule="an http(s):// or file:// URL"),
        "checksum": get(
            "checksum",
            pattern=CHECKSUM_RE,
            rule="'sha256:<hex>' (or md5/sha1/sha512) or 'file:<url of SUMS>'",
        ),
    }
    if len(v.problems) > before or any(x is None for x in values.values()):
        return None
    return Base(name=name, kind=kind, **values)  # type: ignore[arg-type]


def _image(
    v: _Validator,
    name: str,
    n: _Node,
    root: Path,
    bases: dict[str, Base],
    base_names: set[str],
    image_names: set[str],
    resolved: dict[Path, roles.RoleMap | None],
    parents: dict[str, _Node],
    shared: Vulnerabilities | None = None,
) -> Image | None:
    entries = v.mapping(
        n,
        required=("playbook", "targets"),
        optional=("base", "parent", "aws", "vulnerabilities"),
    )
    if entries is None:
        return None
    before = len(v.problems)
    base: Base | None = None
    parent: str | None = None
    if "base" in entries and "parent" in entries:
        pn = entries["parent"][1]
        v.problem(
            pn.line,
            pn.path,
            "an image names a base or a parent image, not both (a layered image starts "
            "from its parent, which has the base)",
        )
    elif "parent" in entries:
        pn = entries["parent"][1]
        parent = v.string(pn)
        if parent is not None and parent not in image_names:
            known = ", ".join(sorted(image_names - {name})) or "none"
            v.problem(
                pn.line,
                pn.path,
                f"no image called {parent!r}{_suggest(parent, image_names)}; images: {known}",
            )
        elif parent == name:
            v.problem(pn.line, pn.path, f"image {name!r} cannot be its own parent")
        elif parent is not None:
            parents[name] = pn
    elif "base" not in entries:
        v.problem(n.key_line, n.path, "missing required key 'base' (or 'parent', an image)")
    if "base" in entries and "parent" not in entries:
        bn = entries["base"][1]
        base_name = v.string(bn)
        if base_name is not None and base_name not in base_names:
            known = ", ".join(sorted(base_names)) or "none"
            v.problem(
                bn.line,
                bn.path,
                f"no base called {base_name!r}{_suggest(base_name, base_names)}; bases: {known}",
            )
        elif base_name is not None:
            base = bases.get(base_name)
    playbook = (
        _playbook(v, entries["playbook"][1], root, resolved) if "playbook" in entries else None
    )
    targets = None
    if "targets" in entries:
        targets = v.strings(entries["targets"][1], lambda t: _target(v, t), non_empty=True)
    aws = None
    if "aws" in entries:
        aws = _aws(v, name, entries["aws"][1], layered="parent" in entries)
    elif targets and any(t in AWS_TARGETS for t in targets):
        wanted = ", ".join(t for t in targets if t in AWS_TARGETS)
        v.problem(n.key_line, n.path, f"missing required key 'aws' (the image has target {wanted})")
    vulnerabilities = shared
    if "vulnerabilities" in entries:
        vn = entries["vulnerabilities"][1]
        if isinstance(vn.node, yaml.ScalarNode) and v.value(vn) is False:
            vulnerabilities = None  # this image opts out of the shared policy
        else:
            vulnerabilities = _vulnerabilities(v, vn, root)
    if len(v.problems) > before or playbook is None or targets is None:
        return None
    if base is None and parent is None:
        return None
    # A child's base is its root ancestor's, filled in by _layered.
    return Image(
        name=name,
        base=base,  # type: ignore[arg-type]
        playbook=playbook,
        targets=targets,
        aws=aws,
        parent=parent,
        vulnerabilities=vulnerabilities,
    )


def _layered(
    v: _Validator, images: dict[str, Image], parents: dict[str, _Node]
) -> dict[str, Image]:
    """Check the parent links (no cycle, targets among the parent's) and give each layered
    image its root ancestor's base. Images whose chain is broken are dropped (reported)."""
    out = {n: i for n, i in images.items() if i.parent is None}
    for name, image in images.items():
        if image.parent is None:
            continue
        chain, cur = [name], image
        while cur is not None and cur.parent is not None and cur.parent not in chain:
            chain.append(cur.parent)
            cur = images.get(cur.parent)
        pn = parents[name]
        if cur is not None and cur.parent in chain:
            v.problem(
                pn.line, pn.path, "parent images form a cycle: " + " -> ".join([*chain, cur.parent])
            )
            continue
        if cur is None:
            continue  # an ancestor is invalid, and reported where it is written
        parent = images[image.parent]
        missing = [t for t in image.targets if t not in parent.targets]
        if missing:
            v.problem(
                pn.line,
                pn.path,
                f"target(s) {', '.join(missing)} of {name!r} are not targets of its parent "
                f"{parent.name!r} (it lists {', '.join(parent.targets)}): a layered image "
                "bakes from its parent's build on the same target",
            )
            continue
        out[name] = Image(
            name=name,
            base=cur.base,
            playbook=image.playbook,
            targets=image.targets,
            aws=image.aws,
            parent=image.parent,
            vulnerabilities=image.vulnerabilities,
        )
    return {n: out[n] for n in images if n in out}


def _vulnerabilities(v: _Validator, n: _Node, root: Path) -> Vulnerabilities | None:
    """A CVE gate policy: `tracker` checked here, the rest by cvegate.parse_policy, key by
    key, so a problem is reported on the line of the key (or allow entry) it is about."""
    entries = v.mapping(
        n, required=(), optional=("tracker", *cvegate.POLICY_KEYS), what="a CVE gate policy"
    )
    if entries is None:
        return None
    before = len(v.problems)
    tracker = None
    if "tracker" in entries:
        tn = entries["tracker"][1]
        rel = v.string(tn)
        if rel is not None and os.path.isabs(rel):
            v.problem(
                tn.line,
                tn.path,
                f"{rel!r} must be relative to the project root (like security/tracker.json); "
                "the cve_tracker setting may name a file anywhere",
            )
        elif rel is not None:
            tracker = root / rel
    raw: dict[str, Any] = {}
    for key, (line, value) in entries.items():
        if key == "tracker":
            continue
        one = {key: v.value(value)}
        try:
            cvegate.parse_policy(one, n.path)
        except GoldsmithError as err:
            if key == "allow" and isinstance(value.node, yaml.SequenceNode):
                # The first entry that fails on its own is the line to point at.
                for item in value.node.value:
                    try:
                        cvegate.parse_policy({"allow": [v.value(_Node(item, ""))]}, n.path)
                    except GoldsmithError:
                        line = item.start_mark.line + 1
                        break
            v.problem(line, "", str(err))
            continue
        raw |= one
    if len(v.problems) > before:
        return None
    return Vulnerabilities(cvegate.parse_policy(raw, n.path), tracker, n.path)


def _target(v: _Validator, n: _Node) -> str | None:
    t = v.string(n)
    if t is not None and t not in TARGETS:
        v.problem(
            n.line,
            n.path,
            f"unknown target {t!r}{_suggest(t, TARGETS)}; targets: {', '.join(TARGETS)}",
        )
        return None
    return t


def _playbook(
    v: _Validator, n: _Node, root: Path, resolved: dict[Path, roles.RoleMap | None]
) -> Path | None:
    rel = v.string(n)
    if rel is None:
        return None
    if os.path.isabs(rel):
        v.problem(
            n.line, n.path, f"{rel!r} must be relative to the project root (like playbooks/web.yml)"
        )
        return None
    path = (root / rel).resolve()
    if not path.is_file():
        v.problem(n.line, n.path, f"playbook {rel!r} does not exist")
        return None
    if path not in resolved:
        try:
            resolved[path] = roles.resolve(path, root)
        except roles.RoleError as e:
            resolved[path] = None
            v.problem(n.line, n.path, str(e))
            return None
    return path if resolved[path] is not None else None


def _aws(v: _Validator, image: str, n: _Node, layered: bool = False) -> AwsSettings | None:
    required = ("ssh_username", "instance_type", "regions", "ssm_parameter")
    entries = v.mapping(
        n,
        required=required if layered else ("source_ami", *required),
        optional=(
            "share_with",
            "encrypt_boot",
            "kms_key_id",
            "spot",
            "source_ami",
            "retention",
            "notify",
        ),
    )
    if entries is None:
        return None
    before = len(v.problems)

    def node(key: str) -> _Node | None:
        return entries[key][1] if key in entries else None

    owners: tuple[str, ...] | None = ()
    ami_name: str | None = ""
    if layered and (src := node("source_ami")) is not None:
        v.problem(
            entries["source_ami"][0],
            src.path,
            "a layered image's AMI starts from its parent's proven AMI, never a filter: "
            "remove source_ami (or the merge that brings it)",
        )
    elif (src := node("source_ami")) is not None:
        src_entries = v.mapping(src, required=("owners", "name")) or {}
        if "owners" in src_entries:
            owners = v.strings(src_entries["owners"][1], lambda o: _owner(v, o), non_empty=True)
        if "name" in src_entries:
            ami_name = v.string(src_entries["name"][1])
    ssh_username = v.string(n_) if (n_ := node("ssh_username")) is not None else None
    instance_type = (
        v.string(n_, INSTANCE_TYPE_RE, "an EC2 instance type like 't3.small'")
        if (n_ := node("instance_type")) is not None
        else None
    )
    regions = (
        v.strings(
            n_, lambda r: v.string(r, REGION_RE, "an AWS region like 'eu-west-1'"), non_empty=True
        )
        if (n_ := node("regions")) is not None
        else None
    )
    share_with: tuple[str, ...] | None = ()
    if (n_ := node("share_with")) is not None:
        share_with = v.strings(n_, lambda a: _account(v, a))
    ssm = None
    if (n_ := node("ssm_parameter")) is not None:
        ssm = _ssm(v, n_, image)
    encrypt = v.boolean(n_) if (n_ := node("encrypt_boot")) is not None else True
    kms: dict[str, str] | None = {}
    if (n_ := node("kms_key_id")) is not None:
        kms = _kms_keys(v, n_, regions)
        if kms and encrypt is False:
            v.problem(n_.line, n_.path, "a KMS key is set but encrypt_boot is false")
    if share_with and encrypt and kms is not None:
        _check_shareable(v, node("share_with"), node("kms_key_id"), share_with, kms)
    spot = v.boolean(n_) if (n_ := node("spot")) is not None else False
    retention = _retention(v, n_) if (n_ := node("retention")) is not None else None
    notify = v.string(n_, NOTIFY_RE, NOTIFY_RULE) if (n_ := node("notify")) is not None else ""
    if len(v.problems) > before:
        return None
    return AwsSettings(
        source_ami_owners=owners,
        source_ami_name=ami_name,
        ssh_username=ssh_username,  # type: ignore[arg-type]
        instance_type=instance_type,
        regions=regions,
        share_with=share_with,  # type: ignore[arg-type]
        ssm_parameter=ssm,
        encrypt_boot=encrypt,
        spot=spot,  # type: ignore[arg-type]
        kms_key_ids=kms or {},
        retention=retention,
        notify=notify or "",
    )


def _retention(v: _Validator, n: _Node) -> Retention | None:
    """`aws.retention`: {keep: N, max_age_days: D}, positive whole numbers, one at least."""
    entries = v.mapping(n, required=(), optional=RETENTION_KEYS, what="a mapping")
    if entries is None:
        return None
    if not entries:
        v.problem(n.line, n.path, "names no rule: give keep, max_age_days or both")
        return None
    before = len(v.problems)
    values: dict[str, int] = {}
    for key, (_, value) in entries.items():
        if key not in RETENTION_KEYS:
            continue  # reported by v.mapping
        raw = v.value(value) if isinstance(value.node, yaml.ScalarNode) else None
        if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
            values[key] = raw
        else:
            shown = value.node.value if isinstance(value.node, yaml.ScalarNode) else None
            what = repr(shown) if shown is not None else _kind_of(value.node)
            v.problem(value.line, value.path, f"must be a whole number of at least 1, not {what}")
    if len(v.problems) > before:
        return None
    return Retention(**values)


def _notifications(v: _Validator, n: _Node) -> str:
    """The top-level `notifications:` section: {notify: <SNS topic or event bus ARN>} for
    every image."""
    entries = v.mapping(n, required=("notify",), what="a mapping with 'notify'")
    if not entries or "notify" not in entries:
        return ""
    return v.string(entries["notify"][1], NOTIFY_RE, NOTIFY_RULE) or ""


KMS_RULE = "a KMS key id, alias/<name>, multi-region key mrk-<id> or key ARN"


def _kms_keys(v: _Validator, n: _Node, regions: tuple[str, ...] | None) -> dict[str, str] | None:
    """`aws.kms_key_id` as {region: key} for every region of the image ({}: default key).

    None when it is invalid (reported). Without valid `regions` only the values are checked.
    """
    if isinstance(n.node, yaml.MappingNode):
        return _kms_per_region(v, n, regions)
    if not isinstance(n.node, yaml.ScalarNode):
        what = _kind_of(n.node)
        v.problem(n.line, n.path, f"must be a KMS key or a mapping of region to key, not {what}")
        return None
    key = v.string(n, KMS_KEY_RE, KMS_RULE, allow_empty=True)
    if not key or regions is None:
        return {} if key == "" else None
    keys = {r: _key_in(key, r) for r in regions}
    if any(k is None for k in keys.values()):
        where = ", ".join(regions)
        v.problem(
            n.line,
            n.path,
            f"{key!r} is a key of one region only, and the image is copied to {where}: "
            f"give one key per region ({{{regions[0]}: <key>, ...}}), an alias/<name>, "
            "or a multi-region key (mrk-<id>)",
        )
        return None
    return keys  # type: ignore[return-value]


def _key_in(key: str, region: str) -> str | None:
    """`key` as it is named in `region`; None when it cannot exist there.

    An alias name and a multi-region key id are the same in every region, and their ARNs
    differ only by region; a single-region key exists only in the region of its ARN (a
    bare key id: in a single-region image only).
    """
    arn = KMS_ARN_RE.match(key)
    if arn is None:
        return key if key.startswith(("alias/", "mrk-")) else None
    prefix, key_region, account, kind, name = arn.groups()
    if key_region == region:
        return key
    if kind == "alias" or name.startswith("mrk-"):
        return f"{prefix}:{region}:{account}:{kind}/{name}"
    return None


def _kms_per_region(
    v: _Validator, n: _Node, regions: tuple[str, ...] | None
) -> dict[str, str] | None:
    entries = v.entries(n, "a mapping of region to KMS key")
    if entries is None:
        return None
    before = len(v.problems)
    keys: dict[str, str] = {}
    for region, (line, value) in entries.items():
        if regions is not None and region not in regions:
            v.problem(
                line,
                value.path,
                f"{region!r} is not one of the image's regions ({', '.join(regions)})"
                f"{_suggest(region, regions)}",
            )
            continue
        key = v.string(value, KMS_KEY_RE, KMS_RULE)
        if key is None:
            continue
        arn = KMS_ARN_RE.match(key)
        if arn and arn.group(2) != region:
            v.problem(
                value.line, value.path, f"{key!r} is a key in {arn.group(2)}, not in {region}"
            )
            continue
        keys[region] = key
    for region in regions or ():
        if region not in entries:
            v.problem(
                n.key_line,
                n.path,
                f"no key for region {region!r}: once any region has a KMS key, every region "
                "the image is copied to needs one (else its copy gets the default aws/ebs key)",
            )
    return keys if len(v.problems) == before else None


def is_default_key(key: str) -> bool:
    """Whether `key` is the account's default EBS key: none, or the aws/ebs alias."""
    return not key or key == DEFAULT_EBS_ALIAS or key.endswith(":" + DEFAULT_EBS_ALIAS)


def _check_shareable(
    v: _Validator,
    at: _Node | None,
    key_node: _Node | None,
    share_with: tuple[str, ...],
    kms: dict[str, str],
) -> None:
    """An AMI shared with other accounts must be encrypted with a key they may use.

    Reported at `share_with`, the key that asks for sharing (the key may come from a
    shared anchor); the message names the kms_key_id value that makes it impossible.
    """
    default = sorted(r for r, k in kms.items() if is_default_key(k))
    if at is None or (kms and not default):
        return
    if kms:
        value = f"kms_key_id is {kms[default[0]]!r} in {', '.join(default)}"
    elif key_node is not None:
        value = f"kms_key_id is {v.value(key_node)!r} (the default aws/ebs key)"
    else:
        value = "no kms_key_id is set (the default aws/ebs key)"
    v.problem(
        at.line,
        at.path,
        f"sharing with {', '.join(share_with)} needs a customer-managed KMS key, but {value}: "
        "another account cannot launch an AMI encrypted with the owner's default EBS key; "
        "set kms_key_id to a key (per region) whose policy lets those accounts use it",
    )


def _account(v: _Validator, n: _Node) -> str | None:
    if isinstance(n.node, yaml.ScalarNode) and not isinstance(v.value(n), str):
        # An unquoted id is an int to YAML: a leading zero would silently vanish.
        v.problem(
            n.line, n.path, f'account id {n.node.value} must be a quoted string: "{n.node.value}"'
        )
        return None
    a = v.string(n)
    if a is not None and not ACCOUNT_RE.match(a):
        v.problem(n.line, n.path, f"{a!r} is not an AWS account id (12 digits, quoted)")
        return None
    return a


def _owner(v: _Validator, n: _Node) -> str | None:
    if (
        isinstance(n.node, yaml.ScalarNode)
        and isinstance(v.value(n), str)
        and v.value(n) in OWNER_ALIASES
    ):
        return v.value(n)
    return _account(v, n)


def _ssm(v: _Validator, n: _Node, image: str) -> str | None:
    raw = v.string(n)
    if raw is None:
        return None
    if not raw.startswith("/"):
        v.problem(n.line, n.path, f"{raw!r} must start with '/' (like /goldsmith/{{image}}/latest)")
        return None
    value = raw.replace("{image}", image)
    if not SSM_RE.match(value):
        v.problem(
            n.line,
            n.path,
            f"{raw!r} is not an SSM parameter path: '/'-separated names of "
            "letters, digits, '.', '-', '_'; {image} is the only placeholder",
        )
        return None
    return value


# --- helpers ------------------------------------------------------------------------------


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind_of(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    tag = node.tag.rsplit(":", 1)[-1]
    names = {
        "int": "a number",
        "float": "a number",
        "bool": "a boolean",
        "null": "empty",
        "str": "a string",
        "timestamp": "a date",
    }
    return names.get(tag, tag)


def _mark_line(e: yaml.MarkedYAMLError) -> int:
    mark = e.problem_mark or e.context_mark
    return mark.line + 1 if mark else 0


def _display(path: Path) -> str:
    """The file as a person would type it: relative to the working folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
