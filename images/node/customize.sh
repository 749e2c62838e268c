#!/bin/sh
# Runs inside the freshly bootstrapped rootfs (chroot), after rootfs/ was copied in.
set -eu
systemctl enable provision-cgroups-writable.service systemd-networkd.service ssh.service
# Not useful in a container, and they would fail (degraded system) or slow boot.
systemctl mask systemd-timesyncd.service getty@tty1.service console-getty.service \
    systemd-resolved.service apt-daily.timer apt-daily-upgrade.timer 2>/dev/null || true
# /proc/sys is writable in a lab machine and most of it (kernel.*, vm.*, fs.*) is the
# build box's own kernel: never apply sysctl.d there at boot.
ln -sf /dev/null /etc/systemd/system/systemd-sysctl.service
# Per-node identity is injected by provision before first boot.
rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
echo node > /etc/hostname
# No DNS in the lab by default; never inherit the build host's resolver.
rm -f /etc/resolv.conf
: > /etc/resolv.conf
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/*.log
