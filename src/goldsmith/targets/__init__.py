"""The targets a bake can have, by name. A new target is one module and one line here.

    local   Packer qemu on this machine; a bootable qcow2 in build/<image>/local/
    aws     Packer amazon-ebs in AWS; AMIs in the image's regions
    twin    amazon-ebs against a local moto, a local VM standing in for the instance

The pipeline (goldsmith.pipeline) asks `get(name)` for a target and never names one; the
catalogue asks `names()` and `sections()` to check images.yml. This module imports no
target: each is loaded when asked for, so it sits below the catalogue.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from ..errors import GoldsmithError


@dataclass(frozen=True)
class Entry:
    factory: str  # "module:callable", called with `args`; returns a contract.Target
    args: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()  # sections an image with this target must have in images.yml


REGISTRY: dict[str, Entry] = {
    "local": Entry("goldsmith.targets.local:Local"),
    "aws": Entry("goldsmith.targets.amazon:Amazon", ("aws",), needs=("aws",)),
    "twin": Entry("goldsmith.targets.amazon:Amazon", ("twin",), needs=("aws",)),
}


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def needing(section: str) -> tuple[str, ...]:
    """The targets that need `section` in an image's catalogue entry."""
    return tuple(n for n, e in REGISTRY.items() if section in e.needs)


def get(name: str) -> Any:
    """The target called `name` (a goldsmith.targets.contract.Target)."""
    if name not in REGISTRY:
        raise GoldsmithError(f"unknown target {name!r}: choose one of {', '.join(REGISTRY)}")
    entry = REGISTRY[name]
    module, factory = entry.factory.split(":")
    return getattr(importlib.import_module(module), factory)(*entry.args)
