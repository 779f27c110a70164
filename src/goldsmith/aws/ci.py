"""Small helpers for buildspec.yml, run as `python -m goldsmith.aws.ci COMMAND`.

images TARGET [NAMES...]   the images to bake for TARGET: NAMES (checked against the
                           catalogue), or every image that has TARGET
"""

from __future__ import annotations

import sys

from ..catalogue import load
from ..errors import GoldsmithError
from ..paths import project_root


def images_for(target: str, names: list[str]) -> list[str]:
    """The images to bake: `names` if given (each must exist and have `target`), else all
    that have `target`; every parent before the images layered on it."""
    from ..graph import order

    catalogue = load(project_root() / "images.yml")
    if not names:
        return order(catalogue, [n for n, i in catalogue.images.items() if target in i.targets])
    for n in names:
        if n not in catalogue.images:
            raise GoldsmithError(f"GOLDSMITH_IMAGES: no image named {n!r} in images.yml")
        if target not in catalogue.images[n].targets:
            raise GoldsmithError(f"GOLDSMITH_IMAGES: image {n!r} has no target {target!r}")
    return [n for n in order(catalogue, names) if n in names]


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "images":
        try:
            print(" ".join(images_for(argv[1], [n for a in argv[2:] for n in a.split()])))
        except GoldsmithError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
