#!/bin/sh
# goldsmith seal: the last thing that runs on a build machine, as root.
#
#   sh seal.sh             seal this machine, then check it (fails listing what is left)
#   sh seal.sh --check DIR only check the root filesystem at DIR (tests; a mounted disk)
#
# Removes everything that belongs to this build or this boot, so the image carries no
# credential, no identity, no log and no cache. The image makes new host keys and a new
# machine-id at first boot (goldsmith-hostkeys.service / cloud-init; systemd).
#
# Environment:
#   GOLDSMITH_BUILD_USER    the user the build logged in as (default goldsmith). It is
#                           deleted only if goldsmith's credential unit created it (its
#                           marker says so); an image's own user (admin on Debian's AMIs)
#                           stays, without keys, sudo rule or residue.
#   GOLDSMITH_SEAL_POWEROFF 1: power the machine off afterwards (local and twin builds,
#                           whose build user is gone by then).
#   GOLDSMITH_INVENTORY     a cloud build: goldsmith's inventory module (standard library
#                           only), uploaded beside this script. Once the self-check has
#                           passed, the seal reads what the machine holds with it into
#                           $INVENTORY_DIR/inventory.json (/run: a tmpfs, never in the
#                           image), owned by the build user, who fetches it and removes
#                           it; a poweroff then waits for that (at most 5 minutes).
#
# The check is the seal's last step, so a cloud build, whose disk cannot be mounted
# here, fails (and registers no AMI) if anything is left. The hygiene spec
# (tests/spec/hygiene) proves the same things again on a local or twin build's disk.
set -eu

BUILD_USER="${GOLDSMITH_BUILD_USER:-goldsmith}"
MARKER=/var/lib/goldsmith/build-user
CREDENTIAL_UNIT=goldsmith-build-credential.service
PRIVATE_KEY='-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY-----'
INVENTORY_DIR=/run/goldsmith-inventory
INVENTORY="${GOLDSMITH_INVENTORY:-}"
HISTORIES='.bash_history .zsh_history .sh_history .history .python_history .lesshst .viminfo .mysql_history .psql_history .sqlite_history .wget-hsts .node_repl_history'

# Every home: root's, and each one under /home. Prints them relative to $1 (a root).
homes() {
    echo "$1/root"
    for h in "$1"/home/*; do
        if [ -d "$h" ]; then echo "$h"; fi
    done
}

problem() {
    echo "goldsmith-seal: LEFT: $*"
    FOUND=$((FOUND + 1))
}

# Report each path `find` prints (one problem per path, with a reason). No temporary
# file: the check must not leave what it looks for.
each() {
    reason=$1
    shift
    report "$reason" "$(find "$@" -print 2>/dev/null || true)"
}

# report REASON LINES: one problem per line.
report() {
    [ -n "$2" ] || return 0
    while IFS= read -r p; do problem "$p ($1)"; done <<LINES
$2
LINES
}

# check ROOT [CREATED]: everything the seal removes must be absent from ROOT.
# CREATED=1: goldsmith created the build user, so the user itself must be gone too.
check() {
    R=$1
    created=${2:-0}
    FOUND=0
    each "SSH host key: every machine makes its own" "$R/etc/ssh" -maxdepth 1 -name 'ssh_host_*'
    if [ -s "$R/etc/machine-id" ]; then problem "$R/etc/machine-id (not empty)"; fi
    if [ -s "$R/var/lib/dbus/machine-id" ] && [ ! -L "$R/var/lib/dbus/machine-id" ]; then
        problem "$R/var/lib/dbus/machine-id (not empty)"
    fi
    for h in $(homes "$R"); do
        each "SSH file in a home" "$h/.ssh" -mindepth 1
        each "Ansible's remote folder" "$h" -maxdepth 1 -name .ansible
        each "AWS credentials" "$h" -maxdepth 2 -path '*/.aws/credentials'
        for name in $HISTORIES; do
            each "shell history" "$h" -maxdepth 1 -name "$name"
        done
    done
    if [ "$created" = 1 ] && grep -q "^$BUILD_USER:" "$R/etc/passwd" 2>/dev/null; then
        problem "$R/etc/passwd (build user $BUILD_USER, created by the build, still exists)"
    fi
    if [ "$created" = 1 ] && [ -e "$R/home/$BUILD_USER" ]; then
        problem "$R/home/$BUILD_USER (the build user's home)"
    fi
    each "the build's sudo rule" "$R/etc/sudoers.d" -name goldsmith-build
    each "cloud-init's sudo rule for the build login" "$R/etc/sudoers.d" -name 90-cloud-init-users
    if [ -d "$R/etc/sudoers.d" ]; then
        for f in "$R"/etc/sudoers.d/*; do
            [ -f "$f" ] || continue
            if grep -Eq "^[[:space:]]*$BUILD_USER[[:space:]]" "$f"; then
                problem "$f (a sudo rule for the build user $BUILD_USER)"
            fi
        done
    fi
    each "the build credential unit" "$R/etc/systemd/system" -name "$CREDENTIAL_UNIT"
    each "the build credential program" "$R/usr/local/sbin" -name goldsmith-build-credential
    each "goldsmith's build marker" "$R/var/lib" -maxdepth 1 -name goldsmith
    each "temporary file" "$R/tmp" "$R/var/tmp" -mindepth 1 -maxdepth 1 ! -name 'systemd-private-*'
    each "the build's journal" "$R/var/log/journal" -mindepth 1 -type f
    each "a log of the build" "$R/var/log" -type f ! -empty
    each "the build's random seed" "$R/var/lib/systemd" -maxdepth 1 -name random-seed
    each "this host's credential secret" "$R/var/lib/systemd" -maxdepth 1 -name credential.secret
    each "a DHCP lease" "$R/var/lib/dhcp" -name '*.lease*'
    each "downloaded package" "$R/var/cache/apt" -name '*.deb'
    each "apt's package cache" "$R/var/cache/apt" -maxdepth 1 -name '*.bin'
    each "package list" "$R/var/lib/apt/lists" -mindepth 1 -maxdepth 1 \
        ! -name lock ! -name partial ! -name auxfiles
    each "cloud-init's per-instance state" "$R/var/lib/cloud" -maxdepth 1 -name 'instance*'
    keys=""
    for d in etc root home var opt usr/local srv; do
        if [ -d "$R/$d" ]; then keys="$keys $R/$d"; fi
    done
    # grep: 0 = found, 1 = none, 2 = an error (which must not pass as "none"). With no
    # folder at all it would search the current one, so it does not run then.
    rc=0
    found=""
    if [ -n "$keys" ]; then
        # shellcheck disable=SC2086
        found=$(grep -rlIs -D skip -E -e "$PRIVATE_KEY" $keys) || rc=$?
    fi
    if [ "$rc" -gt 1 ]; then problem "grep for private keys failed ($rc)"; fi
    report "a private key" "$found"
    if [ "$FOUND" -gt 0 ]; then
        echo "goldsmith-seal: self-check failed: $FOUND thing(s) left on the machine"
        return 1
    fi
    echo "goldsmith-seal: self-check passed"
}

if [ "${1:-}" = "--check" ]; then
    [ $# -ge 2 ] || { echo "usage: seal.sh --check ROOT [CREATED]" >&2; exit 2; }
    check "$2" "${3:-0}"
    exit $?
fi

echo "goldsmith-seal: removing the build's credential, identity, logs and caches (build user $BUILD_USER)"
created=0
if [ "$(cat "$MARKER" 2>/dev/null || true)" = "$BUILD_USER" ]; then
    created=1
fi

# The inventory module goes where the temporary files' cleanup below does not reach.
if [ -n "$INVENTORY" ]; then
    rm -rf "$INVENTORY_DIR"
    mkdir -m 0700 "$INVENTORY_DIR"
    mv "$INVENTORY" "$INVENTORY_DIR/collect.py"
fi

# The build login: its sudo rules, the credential unit that made it, and the user itself
# when goldsmith created it.
rm -f /etc/sudoers.d/goldsmith-build /etc/sudoers.d/90-cloud-init-users
# The unit and every link enabling it share its name. Removed by hand, not with
# `systemctl disable`: its reload of systemd takes seconds under emulation, and this boot
# is ending.
find /etc/systemd/system -name "$CREDENTIAL_UNIT" -exec rm -f {} + 2>/dev/null || true
rm -f /usr/local/sbin/goldsmith-build-credential
if [ "$created" = 1 ] && id "$BUILD_USER" >/dev/null 2>&1; then
    userdel --force --remove "$BUILD_USER" 2>/dev/null || userdel --force "$BUILD_USER"
    rm -rf "/home/${BUILD_USER:?}"
fi
rm -rf /var/lib/goldsmith

# Every home: SSH files (keys, known_hosts), Ansible's remote folder, histories.
for h in $(homes ""); do
    rm -rf "$h"/.ssh/* "$h"/.ssh/.[!.]* "$h/.ansible"
    for name in $HISTORIES; do rm -f "$h/$name"; done
done
rm -rf /root/.cache "/home/$BUILD_USER/.cache"

# Identity: host keys, machine-id, the random seed systemd saved from this boot.
rm -f /etc/ssh/ssh_host_*
truncate -s 0 /etc/machine-id
rm -f /var/lib/dbus/machine-id
# Stopping the service saves the seed now, not at shutdown; then it goes.
systemctl stop systemd-random-seed.service >/dev/null 2>&1 || true
rm -f /var/lib/systemd/random-seed /var/lib/systemd/credential.secret
rm -f /var/lib/dhcp/*.lease*

# Caches: apt's, cloud-init's per-instance state.
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
rm -rf /var/lib/cloud/instances /var/lib/cloud/instance /var/lib/cloud/data /var/lib/cloud/sem

# Logs: journald writes to /run from here on, so the build's journal can go whole; login
# records go (systemd-tmpfiles makes them again at boot); the rest is emptied. Daemons
# that write logs of their own (a role may install them: auditd, rsyslog) stop first, or
# they log the seal and the shutdown after the logs were emptied. auditd refuses
# `systemctl stop`; it exits on SIGTERM (and systemd does not restart a clean exit).
for unit in rsyslog.service syslog.socket syslog-ng.service; do
    systemctl stop "$unit" >/dev/null 2>&1 || true
done
if pids=$(pidof auditd); then
    kill -TERM $pids 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do pidof auditd >/dev/null || break; sleep 1; done
fi
journalctl --relinquish-var >/dev/null 2>&1 || true
find /var/log/journal -mindepth 1 -delete 2>/dev/null || true
rm -f /var/log/wtmp /var/log/btmp /var/log/lastlog /var/log/faillog /var/log/cloud-init*.log
find /var/log -type f \( -name '*.gz' -o -name '*.xz' -o -name '*.[0-9]' -o -name '*.old' \) -delete
find /var/log -type f ! -empty -exec truncate -s 0 {} +

# Temporary files, dotfiles too (this script among them); a running service's private
# /tmp goes when the service stops.
find /tmp /var/tmp -mindepth 1 -maxdepth 1 ! -name 'systemd-private-*' -exec rm -rf {} + 2>/dev/null || true

status=0
check "" "$created" || status=$?
sync
# Hand the freed blocks back to the disk image, so deleted caches do not ship.
fstrim -av 2>/dev/null || true
inventory_taken=0
if [ -n "$INVENTORY" ]; then
    if [ "$status" = 0 ]; then
        # What ships, read after the self-check: the build's files are gone by now.
        if PYTHONDONTWRITEBYTECODE=1 python3 -I - "$INVENTORY_DIR/collect.py" \
            >"$INVENTORY_DIR/inventory.json.part" <<'PY'
import importlib.util
import json
import sys

spec = importlib.util.spec_from_file_location("goldsmith_inventory", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
json.dump(module.collect("/", live=True), sys.stdout, sort_keys=True)
PY
        then
            mv "$INVENTORY_DIR/inventory.json.part" "$INVENTORY_DIR/inventory.json"
            chown -R "$BUILD_USER" "$INVENTORY_DIR" 2>/dev/null || true
            inventory_taken=1
            echo "goldsmith-seal: inventory read ($INVENTORY_DIR/inventory.json)"
        else
            echo "goldsmith-seal: could not read the machine's inventory"
            status=1
        fi
    fi
    rm -f "$INVENTORY_DIR/collect.py" "$INVENTORY_DIR/inventory.json.part"
fi
if [ "$status" = 0 ]; then
    echo "goldsmith-seal: sealed"
fi
if [ "${GOLDSMITH_SEAL_POWEROFF:-0}" = 1 ]; then
    # Local and twin builds: the build user is gone, so the seal powers the machine off
    # itself (also after a failed check: the disk's hygiene spec then names the same
    # leftovers, and Packer does not wait out its shutdown timeout). With an inventory to
    # fetch, once the build has fetched it, outside this session.
    if [ "$inventory_taken" = 1 ]; then
        systemd-run --quiet --collect --unit=goldsmith-seal-poweroff sh -c \
            "i=0; while [ -e $INVENTORY_DIR/inventory.json ] && [ \$i -lt 300 ]; do sleep 1; i=\$((i + 1)); done; systemctl poweroff"
    else
        (sleep 1; systemctl poweroff) >/dev/null 2>&1 &
    fi
fi
exit "$status"
