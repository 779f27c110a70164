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
    for name in ("dev", "twin"):
        try:
            mod = __import__(f"goldsmith.tasks.{name}", fromlist=[name])
        except ModuleNotFoundError:
            continue
        if name == "twin":
            ns.add_collection(Collection.from_module(mod), name="twin")
        else:
            for t in Collection.from_module(mod).tasks.values():
                ns.add_task(t)
    return ns
