"""Invoke task collections. tasks.py at the project root only loads `namespace()`.

core      setup, vendor, base, build, plan, sweep, lint, test, bench  (top level)
devloop   up, converge, verify, idempotence, login, down      (top level)
hostspec  spec                                                (top level)
review    list, diff, cve, report                             (top level)
aws       twin.up|down|env|reset, aws.publish|reap
ci        ci.deploy
"""

from __future__ import annotations

from invoke import Collection

from ..settings import Settings


def namespace() -> Collection:
    from . import aws, ci, core, devloop, hostspec, review

    ns = Collection.from_module(core)
    # The dev loop's tasks and `spec` sit at the top level (`./run up`, `./run spec`, ...).
    for module in (devloop, hostspec, review):
        for t in Collection.from_module(module).tasks.values():
            ns.add_task(t)
    ns.add_collection(aws.twin_collection())
    ns.add_collection(aws.aws_collection())
    ns.add_collection(ci.ci_collection())
    # Settings: defaults here, overridden in invoke.yaml or INVOKE_GOLDSMITH_<NAME>.
    ns.configure({"goldsmith": Settings.defaults()})
    return ns
