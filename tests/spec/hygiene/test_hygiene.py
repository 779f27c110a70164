"""The hygiene spec: what every image ships without, whatever its roles.

It is meant for the sealed disk: after sealing, the output disk's root partition is
mounted read-only and checked with testinfra's chroot backend, e.g.

    pytest tests/spec/hygiene --connection=chroot --hosts=/path/to/mount

(testinfra 10 reads the chroot folder from --hosts; a `chroot:///path` URL leaves it
empty.) The chroot backend runs every command as `chroot <mount> /bin/sh -c ...` with the
image's own tools, so it needs root and a mount that holds a full system, and nothing
runs inside: no /proc, no services. Every check here is therefore file-level (find,
grep, stat), which also makes the spec runnable over SSH against any live host.

Sealed or live: a live machine naturally has SSH host keys, a machine-id and, during a
build, the build user; those checks (marked `sealed`) only prove something on a sealed
disk. The state is the backend's (chroot = sealed, anything else = live) unless
GOLDSMITH_HYGIENE=sealed|live says otherwise (e.g. `sealed` for a cloud target whose
seal is checked over the build's last SSH connection). Checks for secrets (AWS
credentials, private keys other than the machine's own SSH host keys) run in both
states: a live machine must not carry them either.

GOLDSMITH_BUILD_USER names the user the build logged in as (goldsmith's own user
locally, the AMI's user on the twin); GOLDSMITH_BUILD_USER_KEPT=1 says it is the image's
own user (an AMI's default user), which stays, without any way to log in; a build passes
both. The seal's own self-check
(src/goldsmith/data/seal.sh) checks the same things on the machine before it is sealed
for good; this spec proves them again on the disk that ships.
"""

from __future__ import annotations

import os
import shlex

import pytest

BUILD_USER = os.environ.get("GOLDSMITH_BUILD_USER", "goldsmith")
BUILD_USER_KEPT = os.environ.get("GOLDSMITH_BUILD_USER_KEPT", "0") == "1"
HOMES = ("/root", "/home")
# Where secrets would be left behind; the pseudo file systems (/proc, /sys, /dev) and
# the distribution's own files (/usr outside /usr/local) are not searched.
SECRET_DIRS = ("/etc", "/root", "/home", "/var", "/opt", "/usr/local", "/srv")
PRIVATE_KEY_PATTERN = "-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY-----"
HISTORY_NAMES = (
    ".bash_history",
    ".zsh_history",
    ".sh_history",
    ".history",
    ".python_history",
    ".lesshst",
    ".viminfo",
    ".mysql_history",
    ".psql_history",
    ".sqlite_history",
    ".wget-hsts",
    ".node_repl_history",
)
# What apt itself keeps in its lists folder once the lists are gone.
APT_LISTS_ALLOWED = {"lock", "partial", "auxfiles"}


@pytest.fixture(scope="module")
def state(host) -> str:
    """'sealed' or 'live': GOLDSMITH_HYGIENE, else sealed for the chroot backend."""
    forced = os.environ.get("GOLDSMITH_HYGIENE", "").strip()
    if forced:
        if forced not in ("sealed", "live"):
            raise pytest.UsageError(f"GOLDSMITH_HYGIENE={forced!r}: expected 'sealed' or 'live'")
        return forced
    return "sealed" if host.backend.NAME == "chroot" else "live"


@pytest.fixture(autouse=True)
def _only_on_sealed_disks(request, state):
    if request.node.get_closest_marker("sealed") and state != "sealed":
        pytest.skip("machine identity and build residue are only absent on a sealed disk")


def existing(host, paths: tuple[str, ...]) -> list[str]:
    return [p for p in paths if host.file(p).is_directory]


def find(host, paths: tuple[str, ...], *expression: str) -> list[str]:
    """`find <existing paths> <expression> -print` on the target; a failing find fails."""
    roots = existing(host, paths)
    if not roots:
        return []
    cmd = "find " + " ".join(map(shlex.quote, [*roots, *expression])) + " -print"
    return host.check_output(cmd).splitlines()


@pytest.mark.sealed
def test_no_ssh_host_keys(host):
    """Every machine must make its own host keys at first boot, never share the image's."""
    assert find(host, ("/etc/ssh",), "-maxdepth", "1", "-name", "ssh_host_*") == []


@pytest.mark.sealed
def test_build_user_is_gone(host):
    assert not host.file("/var/lib/goldsmith").exists, "the build user's marker"
    if BUILD_USER_KEPT:
        pytest.skip(f"{BUILD_USER} is the image's own user: it stays (without a login)")
    for table in ("/etc/passwd", "/etc/shadow", "/etc/group"):
        names = [line.split(":", 1)[0] for line in host.file(table).content_string.splitlines()]
        assert BUILD_USER not in names, f"{table} still has {BUILD_USER}"
    assert not host.file(f"/home/{BUILD_USER}").exists


@pytest.mark.sealed
def test_no_sudo_rule_for_the_build_login(host):
    """Neither goldsmith's rule, nor cloud-init's for the login user, nor any for the user."""
    rules = find(host, ("/etc/sudoers.d",), "-type", "f")
    names = [r.rsplit("/", 1)[-1] for r in rules]
    assert "goldsmith-build" not in names and "90-cloud-init-users" not in names
    for rule in rules:
        for line in host.file(rule).content_string.splitlines():
            assert line.split()[:1] != [BUILD_USER], f"{rule} gives {BUILD_USER} sudo: {line}"


@pytest.mark.sealed
def test_the_build_credential_unit_does_not_ship(host):
    """Else any later boot with the right SMBIOS string would get a NOPASSWD sudo user."""
    unit = "goldsmith-build-credential.service"
    assert find(host, ("/etc/systemd/system",), "-name", unit) == []
    assert not host.file("/usr/local/sbin/goldsmith-build-credential").exists


@pytest.mark.sealed
def test_no_ssh_files_in_any_home(host):
    """No key, the build's or anyone's, may log in; no known_hosts or key pair ships."""
    for home in [h for h in find(host, HOMES, "-maxdepth", "1", "-type", "d") if h != "/home"]:
        assert find(host, (f"{home}/.ssh",), "-mindepth", "1") == []


@pytest.mark.sealed
def test_no_logs_of_the_build(host):
    """The build's journal (archived or not), login records, apt/dpkg/cloud-init logs."""
    assert find(host, ("/var/log/journal",), "-type", "f") == []
    assert find(host, ("/var/log",), "-type", "f", "!", "-empty") == []


@pytest.mark.sealed
def test_no_state_of_the_build_boot(host):
    """The random seed saved from the build boot would be every machine's first seed."""
    names = ("random-seed", "credential.secret")
    for name in names:
        assert not host.file(f"/var/lib/systemd/{name}").exists, name
    assert find(host, ("/var/lib/dhcp",), "-name", "*.lease*") == []


@pytest.mark.sealed
def test_no_temporary_files(host):
    """Dotfiles too: the seal script, Ansible's and Packer's uploads."""
    assert find(host, ("/tmp", "/var/tmp"), "-mindepth", "1", "-maxdepth", "1") == []


@pytest.mark.sealed
def test_machine_id_is_empty(host):
    """An empty /etc/machine-id makes systemd generate a new one at first boot."""
    machine_id = host.file("/etc/machine-id")
    assert machine_id.is_file, "/etc/machine-id must exist (empty), or early boot misbehaves"
    assert machine_id.size == 0
    dbus = host.file("/var/lib/dbus/machine-id")
    # Debian links it to /etc/machine-id; either way it must hold no id.
    assert not dbus.exists or dbus.content_string.strip() == ""


@pytest.mark.sealed
def test_no_shell_history(host):
    names: list[str] = []
    for name in HISTORY_NAMES:
        names += ["-o", "-name", name]
    found = find(host, HOMES, "-maxdepth", "2", "(", *names[1:], ")")
    assert found == []


@pytest.mark.sealed
def test_no_downloaded_packages(host):
    assert find(host, ("/var/cache/apt",), "-name", "*.deb") == []
    assert find(host, ("/var/cache/apt",), "-maxdepth", "1", "-name", "*.bin") == []


@pytest.mark.sealed
def test_no_package_lists(host):
    lists = find(host, ("/var/lib/apt/lists",), "-mindepth", "1", "-maxdepth", "1")
    left = [p for p in lists if p.rsplit("/", 1)[-1] not in APT_LISTS_ALLOWED]
    assert left == []


@pytest.mark.sealed
def test_no_build_tool_leftovers(host):
    """Ansible's remote temp folders (in every home) and cloud-init's per-instance state."""
    assert find(host, HOMES, "-maxdepth", "2", "-name", ".ansible") == []
    assert find(host, ("/var/lib/cloud",), "-maxdepth", "1", "-name", "instance*") == []


def test_no_aws_credentials(host):
    found = find(host, HOMES, "-path", "*/.aws/credentials")
    assert found == []


def test_no_private_keys(host, state):
    """No file under the searched folders holds a PEM or OpenSSH private key.

    A live machine's own SSH host keys are the one exception (a sealed disk has none).
    """
    roots = existing(host, SECRET_DIRS)
    cmd = "grep -rlIs -D skip -E -e {} {}".format(
        shlex.quote(PRIVATE_KEY_PATTERN), " ".join(map(shlex.quote, roots))
    )
    result = host.run(cmd)
    # grep: 0 = found, 1 = none found, 2 = an error (which must not pass as "none").
    assert result.rc in (0, 1), f"grep failed ({result.rc}): {result.stderr}"
    found = result.stdout.splitlines()
    if state == "live":
        found = [f for f in found if not f.startswith("/etc/ssh/ssh_host_")]
    assert found == []
