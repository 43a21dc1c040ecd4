#!/bin/sh
# Provisions the rig's root file system, in a chroot inside the VM (vitalseal.stage=provision; the
# checkout disk is mounted at /opt/vitalseal). First what a Raspberry Pi gets (install.sh), then
# what only the rig needs: network, mounts, its job unit, a root console for --shell.
set -eu
say() { echo "provision: $*"; }

# The device part, exactly as on a board; the checkout disk is read-only and comes with the agent
# bundle the host built (scripts/rig/image.ts), hence --no-build.
/opt/vitalseal/hardware/raspberry-pi/install.sh --no-apt --no-start --no-build

# The rig part.
echo vitalseal-rig > /etc/hostname
printf '127.0.0.1 localhost\n127.0.1.1 vitalseal-rig\n' > /etc/hosts
cat > /etc/fstab <<'FSTAB'
# The rig boots this image with QEMU's snapshot=on: writes vanish when the VM stops.
LABEL=vs-root  /               ext4  rw,noatime,errors=remount-ro                  0 1
# The checkout (scripts/rig builds it from the host's working tree), read-only. Its by-label link
# comes from udev's coldplug, which took over 30 s under emulation on a loaded host: wait longer.
LABEL=vs-app   /opt/vitalseal  ext4  ro,noatime,nofail,x-systemd.device-timeout=5min  0 2
FSTAB
install -D -m 0644 /opt/vitalseal/hardware/qemu/guest/20-rig.network /etc/systemd/network/20-rig.network
install -D -m 0644 /opt/vitalseal/hardware/qemu/guest/vitalseal-rig-job.service /etc/systemd/system/vitalseal-rig-job.service
install -D -m 0644 /opt/vitalseal/hardware/qemu/guest/serial-autologin.conf /etc/systemd/system/serial-getty@ttyAMA0.service.d/autologin.conf
systemctl enable systemd-networkd.service vitalseal-rig-job.service
# Nothing periodic in a VM that lives for minutes.
systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer >/dev/null 2>&1 || true
# A fresh machine id on every boot (the image is shared by every run).
: > /etc/machine-id
say "done: $(id vitalseal)"
