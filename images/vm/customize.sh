#!/bin/sh
# Runs chrooted in the freshly bootstrapped rootfs, after rootfs/ was copied in.
set -eu
echo 'LABEL=root / ext4 errors=remount-ro 0 1' > /etc/fstab
systemctl enable systemd-networkd.service ssh.service
# Slow under TCG and useless on a cluster node without Internet.
systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    e2scrub_reap.service man-db.timer fstrim.timer 2>/dev/null || true
# Per-VM identity comes from the NoCloud seed (hostname, host keys, address).
rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
echo vm > /etc/hostname
rm -f /etc/resolv.conf
: > /etc/resolv.conf
passwd -l root
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/*.log /var/lib/cloud
