#!/bin/sh
# Runs inside the debootstrapped rootfs (chroot) and turns it into a Vagrant-LXC base box:
# systemd-networkd DHCP on eth0, sshd with per-machine host keys, a `vagrant` user with
# passwordless sudo and the insecure public key (copied to /tmp/vagrant.pub by the builder).
set -eu
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

mkdir -p /etc/systemd/network
cat > /etc/systemd/network/20-eth0.network <<'NET'
[Match]
Name=eth0

[Network]
DHCP=yes

[DHCPv4]
UseHostname=false
NET
systemctl enable systemd-networkd.service systemd-resolved.service ssh.service
ln -sf ../run/systemd/resolve/stub-resolv.conf /etc/resolv.conf
if dpkg-query -W -f='${Status}' ifupdown 2>/dev/null | grep -q 'ok installed'; then
  apt-get purge -y -q ifupdown
fi

echo twlab-debian12 > /etc/hostname
cat > /etc/hosts <<'HOSTS'
127.0.0.1 localhost
127.0.1.1 twlab-debian12
::1 localhost ip6-localhost ip6-loopback
HOSTS

id vagrant >/dev/null 2>&1 || useradd --create-home --shell /bin/bash --groups sudo vagrant
echo 'vagrant:vagrant' | chpasswd
echo 'vagrant ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/vagrant
chmod 0440 /etc/sudoers.d/vagrant
install -d -m 0700 -o vagrant -g vagrant /home/vagrant/.ssh
install -m 0600 -o vagrant -g vagrant /tmp/vagrant.pub /home/vagrant/.ssh/authorized_keys
rm -f /tmp/vagrant.pub

# Host keys are made per machine at first boot, not baked into the box.
rm -f /etc/ssh/ssh_host_*
cat > /etc/systemd/system/twlab-ssh-hostkeys.service <<'UNIT'
[Unit]
Description=Generate SSH host keys (travis-lab box)
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=ssh.service
UNIT
systemctl enable twlab-ssh-hostkeys.service

# A fresh machine-id per machine; no apt lists or .debs in the box.
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/*.log /tmp/*
