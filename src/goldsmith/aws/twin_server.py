"""The twin's moto server: moto's own, with one thing AWS does that moto leaves out.

On AWS, an AMI that CreateImage makes from an EBS-backed instance is EBS-backed, and so is
a copy of it. moto records such AMIs with the root device type "standard", and Packer's
amazon-ebs refuses a source AMI that is not "ebs" ("invalid root device type"): an image
layered on another, whose source is its parent's AMI, could not be baked on the twin.
Here those AMIs are EBS-backed, as on AWS. Run as `python -m goldsmith.aws.twin_server`
with moto_server's arguments.
"""

from __future__ import annotations

import sys
from typing import Any

from moto.ec2.models import amis
from moto.server import main

_moto_init = amis.Ami.__init__


def _as_on_aws(self: amis.Ami, *args: Any, **kwargs: Any) -> None:
    _moto_init(self, *args, **kwargs)
    if kwargs.get("instance") is not None:
        self.root_device_type = "ebs"  # CreateImage from an instance (an EBS-backed one)
    elif kwargs.get("source_ami") is not None:
        self.root_device_type = kwargs["source_ami"].root_device_type  # CopyImage


amis.Ami.__init__ = _as_on_aws  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
