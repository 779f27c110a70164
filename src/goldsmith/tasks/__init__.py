"""Invoke task collections. tasks.py at the project root only loads `namespace()`.

core   setup, base, build, plan, sweep, lint, test, bench   (top level)
dev    up, converge, verify, idempotence, login, down, spec  (top level)
aws    twin.up|down|env|reset, aws.publish|reap
"""

from __future__ import annotations

from invoke import Collection

from ..settings import Settings


def namespace() -> Collection:
    from . import aws, core, dev

    ns = Collection.from_module(core)
    # The dev loop's tasks sit at the top level (`./run up`, `converge`, ...).
    for t in Collection.from_module(dev).tasks.values():
        ns.add_task(t)
    ns.add_collection(aws.twin_collection())
    ns.add_collection(aws.aws_collection())
    # Settings: defaults here, overridden in invoke.yaml or INVOKE_GOLDSMITH_<NAME>.
    ns.configure({"goldsmith": Settings.defaults()})
    return ns
