"""Invoke task collections. tasks.py at the project root only loads `namespace()`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from invoke import Collection, Exit

from ..errors import GoldsmithError


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn goldsmith's errors into a clear message and exit code 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GoldsmithError as e:
            raise Exit(f"error: {e}", code=1) from None
        except KeyboardInterrupt:
            raise Exit("interrupted: cleaned up, nothing was written", code=130) from None

    return wrapper


def namespace() -> Collection:
    from . import core

    ns = Collection.from_module(core)
    # The dev loop's tasks sit at the top level (`invoke up`, `converge`, ...).
    try:
        from . import dev
    except ModuleNotFoundError:
        dev = None
    if dev is not None:
        for t in Collection.from_module(dev).tasks.values():
            ns.add_task(t)
    # The AWS side: `invoke twin.up|down|env|reset` and `invoke aws.publish|reap`.
    from ..aws.tasks import aws_collection, twin_collection

    ns.add_collection(twin_collection())
    ns.add_collection(aws_collection())
    return ns
