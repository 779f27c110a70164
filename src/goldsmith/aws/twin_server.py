"""The twin's moto server: moto's own, answering as AWS does where goldsmith relies on it.

What differs from plain moto (EBS-backed AMIs, encrypted and tagged copies, IAM
enforced for IAM users' keys) is in `twin_moto`.
Run as `python -m goldsmith.aws.twin_server` with moto_server's arguments.
"""

from __future__ import annotations

import sys

from moto.server import main

from .twin_moto import enforce_iam, install

install()
enforce_iam()

if __name__ == "__main__":
    sys.exit(main())
