#!/bin/sh
# Runs chrooted in the freshly bootstrapped rootfs, after rootfs/ was copied in.
set -eu
echo 'LABEL=root / ext4 errors=remount-ro 0 1' > /etc/fstab
systemctl enable systemd-networkd.service ssh.service
# Useless on a cluster node without Internet (and slow on a small machine).
systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    e2scrub_reap.service man-db.timer fstrim.timer 2>/dev/null || true
# Per-node identity comes from the NoCloud seed the installer writes (hostname, host
# keys, address).
rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
echo metal > /etc/hostname
rm -f /etc/resolv.conf
: > /etc/resolv.conf
passwd -l root

kver=$(ls /boot/vmlinuz-* | sed 's|^/boot/vmlinuz-||' | sort -V | tail -1)
# The disk's boot loader: the installer runs `extlinux --install /boot/extlinux` on the
# node's root partition and writes syslinux's MBR; this is what it boots.
mkdir -p /boot/extlinux
cat > /boot/extlinux/extlinux.conf <<CONF
# Written by provision (images/metal): the node boots from its own disk.
DEFAULT node
TIMEOUT 10
LABEL node
  KERNEL /boot/vmlinuz-$kver
  INITRD /boot/initrd.img-$kver
  APPEND root=LABEL=root rw console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0
CONF
# The installer: the same kernel, an initramfs with every storage and network driver
# (MODULES=most), the installer's tools (hooks/provision-installer) and its boot
# script (scripts/provision, run with boot=provision).
PROVISION_INSTALLER=1 mkinitramfs -o /boot/provision-installer.img "$kver"

apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/*.log /var/lib/cloud
