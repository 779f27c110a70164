"""What an image holds, read from its mounted root filesystem without running any of it.

Standard library only, and nothing of the goldsmith package: this file is also copied
alone to a build machine and loaded there by path.

`collect(mnt)` returns one JSON-serialisable mapping, every part sorted, so two
inventories of the same disk are equal and two of different builds can be compared
(`imagediff`), turned into an SBOM (`sbom`) or checked against security data (`cvegate`):

    format      the layout version of this mapping (FORMAT)
    os          etc/os-release: id, version_id, codename ("" when unknown)
    packages    {key: {name, version, architecture, source, source_version}}; the key is
                the package name, or name:arch for a name installed for several arches
    units       {unit: {wanted_by: [<target>.wants | <target>.requires, ...], file}}, the
                units enabled under etc/systemd/system; file is the unit file's path in
                the image ("" when it cannot be found)
    masked      [unit, ...]: the units masked under etc/systemd/system (links to /dev/null)
    sockets     [{unit, type, listen}] of the enabled *.socket units; type names the
                Listen*= setting: stream, datagram, sequential-packet, fifo, netlink,
                special, message-queue, usb-function
    users       {name: {uid, gid, home, shell}}
    groups      {name: {gid, members: [...]}}
    setid       [{path, mode, owner, group}]: SUID/SGID files; mode in octal ("4755")
    kernels     versions of boot/vmlinuz-*
    etc         {path: sha256 | "-> target"} of every regular file and symlink under etc/
    listening   only with `collect(mnt, live=True)`, on a running machine: `live_listeners`
                of mnt/proc, the sockets really listening (see there)

Format 1 had neither `masked` nor `listening`; a reader takes a missing key as empty.

Symlinks in an image are paths of the image: they are resolved against `mnt`, never
against the host's `/`. The SUID walk follows no symlink and stays on the root's
filesystem (proc, sys, dev and run are skipped outright).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import stat
import struct
from pathlib import Path
from typing import Any

__all__ = ["FORMAT", "collect", "live_listeners"]

FORMAT = 2

_UNIT_DIRS = ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system")
_SKIP_TOP = {"proc", "sys", "dev", "run"}
_MAX_LINKS = 40
# The Listen*= settings of a [Socket] section, and the `type` a socket entry names them by.
_LISTEN_TYPES = {
    "ListenStream": "stream",
    "ListenDatagram": "datagram",
    "ListenSequentialPacket": "sequential-packet",
    "ListenFIFO": "fifo",
    "ListenNetlink": "netlink",
    "ListenSpecial": "special",
    "ListenMessageQueue": "message-queue",
    "ListenUSBFunction": "usb-function",
}


def collect(mnt: Path, live: bool = False) -> dict[str, Any]:
    """The inventory of the root filesystem mounted at `mnt` (see the module docstring);
    with `live`, `mnt` is a running machine's root and its listening sockets are added."""
    mnt = Path(mnt)
    users = _users(mnt)
    groups = _groups(mnt)
    units = _units(mnt)
    found = {
        "format": FORMAT,
        "os": _os_release(mnt),
        "packages": _packages(mnt),
        "units": units,
        "masked": _masked(mnt),
        "sockets": _sockets(mnt, units),
        "users": users,
        "groups": groups,
        "setid": _setid(mnt, users, groups),
        "kernels": _kernels(mnt),
        "etc": _etc(mnt),
    }
    if live:
        found["listening"] = live_listeners(mnt / "proc")
    return found


def _resolve(mnt: Path, path: str) -> str | None:
    """`path` (a path of the image) with every symlink in it followed inside the image.

    None when the links loop. `..` above the image's root stays at its root, as in a chroot.
    """
    todo = [p for p in reversed(path.split("/")) if p]
    done: list[str] = []
    hops = 0
    while todo:
        part = todo.pop()
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        here = mnt.joinpath(*done, part)
        if here.is_symlink():
            hops += 1
            if hops > _MAX_LINKS:
                return None
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            todo.extend(p for p in reversed(target.split("/")) if p)
            continue
        done.append(part)
    return "/" + "/".join(done)


def _read(mnt: Path, path: str) -> str | None:
    """The text of the image's file `path` (symlinks resolved in the image), or None."""
    real = _resolve(mnt, path)
    if real is None:
        return None
    try:
        return (mnt / real.lstrip("/")).read_text(errors="replace")
    except OSError:
        return None


def _os_release(mnt: Path) -> dict[str, str]:
    text = _read(mnt, "/etc/os-release") or _read(mnt, "/usr/lib/os-release") or ""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip("\"'")
    return {
        "id": fields.get("ID", ""),
        "version_id": fields.get("VERSION_ID", ""),
        "codename": fields.get("VERSION_CODENAME", ""),
    }


def _dpkg_paragraphs(text: str) -> list[dict[str, str]]:
    """The paragraphs of a dpkg status file; only each field's first line is kept."""
    paragraphs: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                paragraphs.append(current)
                current = {}
        elif line[0] not in " \t":
            key, _, value = line.partition(":")
            current[key] = value.strip()
    if current:
        paragraphs.append(current)
    return paragraphs


def _packages(mnt: Path) -> dict[str, dict[str, str]]:
    """Installed packages (dpkg's status word `installed`, whether held or not)."""
    found = []
    for p in _dpkg_paragraphs(_read(mnt, "/var/lib/dpkg/status") or ""):
        status = p.get("Status", "").split()
        if not status or status[-1] != "installed" or "Package" not in p:
            continue
        version = p.get("Version", "")
        source, _, source_version = p.get("Source", "").partition("(")
        found.append(
            {
                "name": p["Package"],
                "version": version,
                "architecture": p.get("Architecture", ""),
                "source": source.strip() or p["Package"],
                "source_version": source_version.rstrip(") ").strip() or version,
            }
        )
    counts: dict[str, int] = {}
    for pkg in found:
        counts[pkg["name"]] = counts.get(pkg["name"], 0) + 1
    packages = {}
    for pkg in found:
        name = pkg["name"]
        packages[name if counts[name] == 1 else f"{name}:{pkg['architecture']}"] = pkg
    return dict(sorted(packages.items()))


def _units(mnt: Path) -> dict[str, dict[str, Any]]:
    base = mnt / "etc/systemd/system"
    units: dict[str, dict[str, Any]] = {}
    if not base.is_dir() or base.is_symlink():
        return units
    for d in sorted(base.iterdir()):
        if not d.name.endswith((".wants", ".requires")) or d.is_symlink() or not d.is_dir():
            continue
        for link in sorted(d.iterdir()):
            entry = units.setdefault(link.name, {"wanted_by": [], "file": ""})
            entry["wanted_by"].append(d.name)
            if not entry["file"]:
                entry["file"] = _unit_file(mnt, link.name, f"/etc/systemd/system/{d.name}")
    return dict(sorted(units.items()))


def _masked(mnt: Path) -> list[str]:
    """The units masked in etc/systemd/system: their file there is a link to /dev/null."""
    base = mnt / "etc/systemd/system"
    if not base.is_dir() or base.is_symlink():
        return []
    return sorted(
        link.name
        for link in base.iterdir()
        if link.is_symlink()
        and "." in link.name
        and _resolve(mnt, f"/etc/systemd/system/{link.name}") == "/dev/null"
    )


def _unit_file(mnt: Path, unit: str, linked_from: str = "") -> str:
    """The image path of the file that defines `unit`, as systemd would find it, or ""."""
    names = [unit]
    if "@" in unit:
        prefix, _, rest = unit.partition("@")
        names.append(f"{prefix}@{rest[rest.rfind('.') :]}")
    candidates = [f"/{d}/{n}" for n in names for d in _UNIT_DIRS]
    if linked_from:
        # Last: an enabling symlink may point at a unit file outside the search path.
        candidates.append(f"{linked_from}/{unit}")
    for path in candidates:
        real = _resolve(mnt, path)
        if real and real != "/dev/null" and (mnt / real.lstrip("/")).is_file():
            return real
    return ""


def _sockets(mnt: Path, units: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    sockets = []
    for unit, entry in units.items():
        if not unit.endswith(".socket") or not entry["file"]:
            continue
        texts = [_read(mnt, entry["file"]) or ""]
        # Drop-ins may add to (or, with an empty value, reset) the Listen lines.
        dropins: dict[str, str] = {}
        for d in reversed(_UNIT_DIRS):
            folder = mnt / d / f"{unit}.d"
            if folder.is_dir() and not folder.is_symlink():
                for conf in folder.glob("*.conf"):
                    dropins[conf.name] = f"/{d}/{unit}.d/{conf.name}"
        texts += [_read(mnt, dropins[name]) or "" for name in sorted(dropins)]
        listen: list[tuple[str, str]] = []
        for text in texts:
            section = ""
            for raw in text.splitlines():
                line = raw.strip()
                if line.startswith("["):
                    section = line
                    continue
                key, sep, value = line.partition("=")
                kind = _LISTEN_TYPES.get(key.strip())
                if section != "[Socket]" or not sep or kind is None:
                    continue
                if value.strip():
                    listen.append((kind, value.strip()))
                else:  # systemd: an empty Listen*= of any kind resets them all
                    listen = []
        sockets += [{"unit": unit, "type": t, "listen": v} for t, v in listen]
    return sorted(sockets, key=lambda s: (s["unit"], s["type"], s["listen"]))


def _colon_file(mnt: Path, path: str, fields: int) -> list[list[str]]:
    rows = []
    for line in (_read(mnt, path) or "").splitlines():
        if line.startswith(("#", "+", "-")) or not line.strip():
            continue
        row = line.split(":")
        if len(row) >= fields:
            rows.append(row)
    return rows


def _int(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _users(mnt: Path) -> dict[str, dict[str, Any]]:
    users = {
        row[0]: {"uid": _int(row[2]), "gid": _int(row[3]), "home": row[5], "shell": row[6]}
        for row in _colon_file(mnt, "/etc/passwd", 7)
    }
    return dict(sorted(users.items()))


def _groups(mnt: Path) -> dict[str, dict[str, Any]]:
    groups = {
        row[0]: {"gid": _int(row[2]), "members": sorted(m for m in row[3].split(",") if m)}
        for row in _colon_file(mnt, "/etc/group", 4)
    }
    return dict(sorted(groups.items()))


def _setid(
    mnt: Path, users: dict[str, dict[str, Any]], groups: dict[str, dict[str, Any]]
) -> list[dict[str, str]]:
    user_of = {u["uid"]: name for name, u in reversed(users.items())}
    group_of = {g["gid"]: name for name, g in reversed(groups.items())}
    root_dev = os.lstat(mnt).st_dev
    found = []
    todo = [str(mnt)]
    prefix = len(str(mnt).rstrip("/"))
    while todo:
        top = todo.pop()
        try:
            entries = list(os.scandir(top))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_symlink():
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if top == str(mnt) and entry.name in _SKIP_TOP:
                        continue
                    if entry.stat(follow_symlinks=False).st_dev == root_dev:
                        todo.append(entry.path)
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_mode & (stat.S_ISUID | stat.S_ISGID) and st.st_dev == root_dev:
                found.append(
                    {
                        "path": entry.path[prefix:],
                        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
                        "owner": user_of.get(st.st_uid, str(st.st_uid)),
                        "group": group_of.get(st.st_gid, str(st.st_gid)),
                    }
                )
    return sorted(found, key=lambda f: f["path"])


def _kernels(mnt: Path) -> list[str]:
    boot = mnt / "boot"
    if not boot.is_dir():
        return []
    return sorted(
        p.name.removeprefix("vmlinuz-")
        for p in boot.glob("vmlinuz-*")
        if p.is_file() and not p.is_symlink()
    )


def _etc(mnt: Path) -> dict[str, str]:
    hashes: dict[str, str] = {}
    etc = mnt / "etc"
    if not etc.is_dir() or etc.is_symlink():
        return hashes
    for folder, dirs, files in os.walk(etc):  # does not follow symlinked folders
        here = Path(folder)
        for name in files + [d for d in dirs if (here / d).is_symlink()]:
            path = here / name
            rel = path.relative_to(mnt).as_posix()
            try:
                if path.is_symlink():
                    hashes[rel] = f"-> {os.readlink(path)}"
                elif path.is_file():
                    hashes[rel] = _sha256(path)
            except OSError as err:
                hashes[rel] = f"unreadable: {err.strerror}"
    return dict(sorted(hashes.items()))


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# /proc/net/tcp's `st` of a listening socket (TCP_LISTEN), and of a UDP socket that is
# bound but connected to no peer (TCP_CLOSE, which UDP reuses).
_TCP_LISTEN = "0A"
_UDP_UNCONNECTED = "07"
_UNIX_ACCEPTCON = 0x10000  # /proc/net/unix's Flags bit of a listening socket
_UNIX_TYPES = {"0001": "unix", "0002": "unix-dgram", "0005": "unix-seqpacket"}


def live_listeners(proc: Path = Path("/proc")) -> list[dict[str, Any]]:
    """The sockets a running machine listens on, read from its `proc` (a /proc).

    TCP sockets in the LISTEN state and UDP sockets bound to a port and connected to no
    peer (net/tcp, tcp6, udp, udp6), and unix sockets with a path in the filesystem that
    listen (stream, seqpacket) or are bound (datagram) (net/unix). Each is {proto (the
    file's name: tcp, tcp6, udp, udp6; unix, unix-dgram, unix-seqpacket), address, port
    (None for unix), process}: process is the `comm` of the lowest pid holding the socket
    (proc/<pid>/fd), "" when no readable process holds it. Sorted, without repeats.
    """
    proc = Path(proc)
    found: list[tuple[str, str, int | None, str]] = []
    for proto, state in (("tcp", _TCP_LISTEN), ("udp", _UDP_UNCONNECTED)):
        for suffix in ("", "6"):
            for fields in _proc_table(proc / "net" / f"{proto}{suffix}"):
                if len(fields) < 10 or fields[3] != state:
                    continue
                address, port = _proc_address(fields[1])
                if port:  # port 0: an unbound UDP socket
                    found.append((proto + suffix, address, port, fields[9]))
    for fields in _proc_table(proc / "net/unix", 7):
        if len(fields) < 8 or not fields[7].startswith("/") or fields[4] not in _UNIX_TYPES:
            continue
        listening = int(fields[3], 16) & _UNIX_ACCEPTCON
        if listening or _UNIX_TYPES[fields[4]] == "unix-dgram":
            found.append((_UNIX_TYPES[fields[4]], fields[7], None, fields[6]))
    owners = _socket_owners(proc) if found else {}
    rows = {(p, a, port, owners.get(inode, "")) for p, a, port, inode in found}
    return [
        {"proto": p, "address": a, "port": port, "process": comm}
        for p, a, port, comm in sorted(rows, key=lambda r: (r[0], r[1], r[2] or 0, r[3]))
    ]


def _proc_table(path: Path, maxsplit: int = -1) -> list[list[str]]:
    """The rows of a /proc/net table, split on white space, its heading left out."""
    try:
        lines = path.read_text(errors="replace").splitlines()[1:]
    except OSError:
        return []
    return [line.split(None, maxsplit) for line in lines if line.strip()]


def _proc_address(field: str) -> tuple[str, int]:
    """(address, port) of /proc/net/tcp's `0100007F:0016` (the address in 32-bit words of
    the host's byte order, the port in hex), IPv4 or IPv6."""
    hex_address, _, hex_port = field.partition(":")
    raw = b"".join(
        struct.pack("=I", int(hex_address[i : i + 8], 16)) for i in range(0, len(hex_address), 8)
    )
    address = ipaddress.ip_address(raw)
    mapped = getattr(address, "ipv4_mapped", None)  # written alike by every Python
    return (f"::ffff:{mapped}" if mapped else str(address)), int(hex_port, 16)


def _socket_owners(proc: Path) -> dict[str, str]:
    """{socket inode: comm of the lowest pid with it open}, from proc/<pid>/fd."""
    owners: dict[str, str] = {}
    try:
        pids = sorted((int(p.name) for p in proc.iterdir() if p.name.isdigit()), reverse=True)
    except OSError:
        return owners
    for pid in pids:  # highest first: the lowest pid's name is written last
        try:
            fds = list((proc / str(pid) / "fd").iterdir())
            comm = (proc / str(pid) / "comm").read_text().strip()
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target.endswith("]"):
                owners[target[8:-1]] = comm
    return owners
