"""How a build key reaches the guest: SMBIOS OEM string, or a NoCloud seed for cloud images."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

import yaml

from goldsmith import cloudinit, vm

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx0 goldsmith-build"
DATA = Path(__file__).resolve().parents[2] / "src/goldsmith/data"


def _credential_unit():
    path = str(DATA / "goldsmith-build-credential")
    loader = importlib.machinery.SourceFileLoader("cred", path)
    spec = importlib.util.spec_from_loader("cred", loader)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smbios_credential_carries_the_user_and_the_key_without_its_comment() -> None:
    value = vm.smbios_credential(KEY, "admin")
    assert value == (
        "type=11,value=goldsmith.build_user=admin,"
        "value=goldsmith.build_key=ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx0"
    )
    assert "build_user=goldsmith," in vm.smbios_credential(KEY)  # the one default


def test_guest_unit_reads_the_key_back_from_a_dmi_table() -> None:
    """The guest's parser finds the OEM string among other SMBIOS structures."""
    unit = _credential_unit()
    bios = bytes([0, 4, 0, 0]) + b"SeaBIOS\0\0"
    oem = bytes([11, 5, 1, 0, 2]) + b"other=1\0goldsmith.build_key=" + KEY.encode() + b"\0\0"
    end = bytes([127, 4, 2, 0]) + b"\0\0"
    strings = list(unit.oem_strings(bios + oem + end))
    assert strings == [b"other=1", b"goldsmith.build_key=" + KEY.encode()]


def test_nocloud_seed_makes_the_build_user_with_the_key(tmp_path: Path) -> None:
    seed = cloudinit.write_seed(tmp_path / "seed", KEY, "web", "goldsmith")
    user_data = (seed / "user-data").read_text()
    assert user_data.startswith("#cloud-config\n")
    (user,) = yaml.safe_load(user_data)["users"]
    assert user["name"] == "goldsmith" and user["ssh_authorized_keys"] == [KEY]
    assert user["sudo"] == "ALL=(ALL) NOPASSWD:ALL"
    # The seal removes only a user goldsmith made: the seed says it made this one.
    (marker,) = yaml.safe_load(user_data)["write_files"]
    assert marker["path"] == "/var/lib/goldsmith/build-user" and marker["content"] == "goldsmith\n"
    assert yaml.safe_load((seed / "meta-data").read_text())["instance-id"] == "goldsmith-web"
    assert cloudinit.smbios_seed(8123) == "type=1,serial=ds=nocloud;s=http://10.0.2.2:8123/"
