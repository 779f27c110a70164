"""The build credential for a distribution's cloud image: a cloud-init NoCloud seed.

goldsmith's own base turns an SMBIOS OEM string into the build user. A cloud image has
cloud-init instead, which reads `ds=nocloud;s=<url>` from the SMBIOS system serial
number and fetches user-data from that URL: Packer's qemu builder serves the seed
folder over HTTP to the guest (10.0.2.2 on QEMU's user network). The user-data makes
the same build user with this build's key and sudo, and the marker that tells the seal
goldsmith made that user (so the seal removes it).
"""

from __future__ import annotations

import json
from pathlib import Path

HOST_FROM_GUEST = "10.0.2.2"  # QEMU user-mode networking's address of the host
# Where the credential unit and this seed note that goldsmith created the build user.
MARKER = "/var/lib/goldsmith/build-user"


def write_seed(folder: Path, public_key: str, hostname: str, user_name: str) -> Path:
    """Write NoCloud `user-data` and `meta-data` into `folder`; return it."""
    folder.mkdir(parents=True, exist_ok=True)
    user = {
        "name": user_name,
        "shell": "/bin/bash",
        "sudo": "ALL=(ALL) NOPASSWD:ALL",
        "lock_passwd": True,
        "ssh_authorized_keys": [public_key],
    }
    # JSON is YAML: no YAML writer needed, and no quoting surprises in the key.
    marker = {"path": MARKER, "content": f"{user_name}\n", "permissions": "0600"}
    config = {"users": [user], "write_files": [marker]}
    (folder / "user-data").write_text("#cloud-config\n" + json.dumps(config) + "\n")
    (folder / "meta-data").write_text(
        json.dumps({"instance-id": f"goldsmith-{hostname}", "local-hostname": hostname}) + "\n"
    )
    return folder


def smbios_seed(port: int) -> str:
    """The -smbios value that tells cloud-init where the seed is (commas doubled for QEMU)."""
    return f"type=1,serial=ds=nocloud;s=http://{HOST_FROM_GUEST}:{port}/"
