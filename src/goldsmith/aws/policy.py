"""aws/policy.json: the IAM policy a build, a publish and a reap need (see the README).

The CI stack attaches it to the merge builds' role (goldsmith.aws.stack), and the twin
runs its builds as a user with only this policy (goldsmith.aws.twin.builder).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import GoldsmithError

POLICY = Path("aws") / "policy.json"


def load_policy(root: Path) -> dict[str, Any]:
    """aws/policy.json, checked to be an IAM policy document."""
    path = root / POLICY
    try:
        policy = json.loads(path.read_text())
    except FileNotFoundError:
        raise GoldsmithError(
            f"{POLICY}: missing; it holds the build role's IAM policy document "
            "that the CI stack attaches (see the README's 'The CI stack')"
        ) from None
    except (OSError, json.JSONDecodeError) as err:
        raise GoldsmithError(f"{POLICY}: not a JSON document ({err})") from None
    if (
        not isinstance(policy, dict)
        or policy.get("Version") != "2012-10-17"
        or not isinstance(policy.get("Statement"), list)
        or not policy["Statement"]
    ):
        raise GoldsmithError(
            f'{POLICY}: not an IAM policy document: {{"Version": "2012-10-17", '
            '"Statement": [...]}} with at least one statement'
        )
    return policy
