"""`./run spec` against a host that is not what the image says: a bare Debian VM.

base's dev VM boots the bare Debian disk (base is baked from it), so this needs no bake
and runs in the lane of one-role images; the dev loop's module proves spec against a
converged VM.
"""

from __future__ import annotations

import pytest
from conftest import ROOT, invoke, vm_processes

from goldsmith import devloop

pytestmark = pytest.mark.bake

BARE = "test-spec-bare"


def test_spec_against_a_bare_debian_vm_fails_naming_missing_pieces() -> None:
    """web's drift check (base's specs and its own) names what is missing of both layers."""
    invoke(ROOT, "down", "--name", BARE)  # left over from an interrupted run
    proc = invoke(ROOT, "up", "--image", "base", "--name", BARE)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    try:
        assert "[packer]" not in proc.stdout, "base's dev VM boots the Debian disk: no bake"
        bare = devloop.find(ROOT, "base", BARE)
        proc = invoke(
            ROOT,
            "spec",
            "--image",
            "web",
            "--hosts",
            f"ssh://goldsmith@127.0.0.1:{bare.machine.ssh_port}",
            "--key",
            str(bare.machine.key),
        )
    finally:
        invoke(ROOT, "down", "--name", BARE)
    assert proc.returncode != 0
    failed = [line for line in proc.stderr.splitlines() if "::" in line]
    assert any("nginx" in line for line in failed), proc.stderr[-3000:]
    assert any("node_exporter" in line for line in failed), proc.stderr[-3000:]
    assert (ROOT / "build/spec/web-junit.xml").is_file()
    assert not vm_processes(BARE), "the bare VM outlived `./run down`"
