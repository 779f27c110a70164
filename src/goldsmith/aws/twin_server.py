"""The twin's moto server: moto's own, answering as AWS does where goldsmith relies on it.

What differs from plain moto (EBS-backed AMIs, encrypted and tagged copies) is in
`twin_moto`. Run as `python -m goldsmith.aws.twin_server` with moto_server's arguments.
"""

from __future__ import annotations

import sys

from moto.server import main

from .twin_moto import install

install()

if __name__ == "__main__":
    sys.exit(main())
