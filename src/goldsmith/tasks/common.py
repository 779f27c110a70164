"""What every task module shares: error handling and the settings from Invoke's config."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from invoke import Exit

from ..catalogue import Catalogue
from ..errors import GoldsmithError
from ..settings import Settings


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn goldsmith's errors into a clear message and exit code 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GoldsmithError as e:
            from ..pipeline import Interrupted

            raise Exit(f"error: {e}", code=130 if isinstance(e, Interrupted) else 1) from None
        except KeyboardInterrupt:
            raise Exit("interrupted", code=130) from None

    return wrapper


def settings(c: Any) -> Settings:
    """goldsmith's settings from Invoke's configuration (invoke.yaml, INVOKE_GOLDSMITH_*)."""
    return Settings.from_config(c.config.get("goldsmith"))


def require_image(catalogue: Catalogue, image: str | None, task: str) -> str:
    """`--image` is needed: say which images there are when it is missing or unknown."""
    known = ", ".join(sorted(catalogue.images))
    if not image:
        raise GoldsmithError(f"--image is required: ./run {task} --image NAME (images: {known})")
    if image not in catalogue.images:
        raise GoldsmithError(f"images.yml: no image named {image!r} (images: {known})")
    return image
