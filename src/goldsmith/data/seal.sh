#!/bin/sh
# goldsmith seal: the last thing that runs on a build machine, as root.
# Removes everything that belongs to this build or this boot, so the image carries
# no credential, no identity and no cache. The image makes new host keys and a new
# machine-id at first boot (goldsmith-hostkeys.service / cloud-init; systemd).
set -eu
echo "goldsmith-seal: removing the build user, keys, identity, history and caches"
rm -f /etc/sudoers.d/goldsmith-build
if id goldsmith >/dev/null 2>&1; then
    userdel --force --remove goldsmith 2>/dev/null || userdel --force goldsmith
fi
rm -rf /home/goldsmith
rm -f /etc/ssh/ssh_host_*
rm -f /root/.ssh/authorized_keys
# The cloud's default user (admin on Debian's AMIs) logged the build in with the build's
# key; cloud-init writes the instance's own key at first boot.
rm -f /home/*/.ssh/authorized_keys
truncate -s 0 /etc/machine-id
rm -f /var/lib/dbus/machine-id
rm -f /root/.bash_history /root/.python_history /root/.lesshst /root/.viminfo
find /home -maxdepth 2 \( -name .bash_history -o -name .python_history -o -name .lesshst \) -delete 2>/dev/null || true
rm -rf /root/.ansible /root/.cache /tmp/* /var/tmp/* 2>/dev/null || true
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
rm -rf /var/lib/cloud/instances /var/lib/cloud/instance /var/lib/cloud/data /var/lib/cloud/sem 2>/dev/null || true
journalctl --rotate >/dev/null 2>&1 || true
journalctl --vacuum-time=1s >/dev/null 2>&1 || true
rm -f "$0"
sync
# Hand the freed blocks back to the disk image, so deleted caches do not ship.
fstrim -av 2>/dev/null || true
echo "goldsmith-seal: sealed"
if [ "${GOLDSMITH_SEAL_POWEROFF:-0}" = 1 ]; then
    # Local builds: the build user is gone, so the seal powers the machine off itself.
    (sleep 1; systemctl poweroff) >/dev/null 2>&1 &
fi
