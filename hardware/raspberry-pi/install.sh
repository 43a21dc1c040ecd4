#!/bin/sh
# Installs the vitalseal agent's system integration on a Debian 12 / Raspberry Pi OS (Bookworm)
# device, from a checkout whose dependencies are installed (npm ci --ignore-scripts):
#
#   sudo /opt/vitalseal/hardware/raspberry-pi/install.sh [--no-apt] [--no-start] [--no-build]
#
#   - Debian packages for the TPM: libtss2-fapi1, libtss2-tcti-device0, tpm2-tools, tpm2-openssl,
#     tpm2-abrmd, libtss2-tcti-tabrmd0, dbus (--no-apt: only check)
#   - tpm2-abrmd.service, enabled: the resource manager the agent reaches over the system bus
#     (TCTI tabrmd:bus_type=system); MQTTS needs it, /dev/tpmrm0 gives a client too few TPM objects
#   - the system user vitalseal in group tss      /usr/lib/sysusers.d/vitalseal.conf
#   - udev rules for /dev/tpmrm0                 /etc/udev/rules.d/60-vitalseal-tpm.rules
#   - the hardened unit, enabled                  /etc/systemd/system/vitalseal-agent.service
#   - the command                                 /usr/local/bin/vitalseal -> <checkout>/scripts/bin/vitalseal.mjs
#   - the agent, bundled for plain node           <checkout>/dist/agent/ (npm run build:agent; --no-build: the one
#                                                 there, as the rig's read-only checkout has it), and
#                                                 /usr/local/lib/vitalseal/vitalseal-agent.mjs -> <checkout>/dist/agent/vitalseal-agent.mjs
#   - the configuration directory                /etc/vitalseal (root:vitalseal, 0750)
#   - the state directory                        /var/lib/vitalseal (vitalseal, 0700)
#
# It never writes /etc/vitalseal/agent.yaml (the unit waits for it) and never edits config.txt.
# Safe to run again. Inside a chroot (an image build) it only installs files and enables the unit.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
checkout=$(cd "$here/../.." && pwd)
apt=yes
start=yes
build=yes
while [ $# -gt 0 ]; do
  case "$1" in
    --no-apt) apt=no ;;
    --no-start) start=no ;;
    --no-build) build=no ;;
    -h|--help) sed -n '2,/^set -eu/p' "$0" | sed -e 's/^# \{0,1\}//' -e '/^set -eu/d'; exit 0 ;;
    *) echo "install: unknown argument $1" >&2; exit 1 ;;
  esac
  shift
done

say() { echo "install: $*"; }
die() { echo "install: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (sudo)"

# Node 20 or newer, where the unit's PATH finds it first (Debian 12's own nodejs is 18).
node=$(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin command -v node || true)
[ -n "$node" ] || die "no node in PATH: install Node 20+ as /usr/local/bin/node (README.md, step 3)"
major=$("$node" -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 20 ] || die "$node is Node $major; vitalseal needs 20 or newer"
[ -e "$checkout/node_modules/tsx/package.json" ] || die "$checkout has no node_modules: run 'npm ci --ignore-scripts' there first"

# The TPM libraries: FAPI (loaded by the key store), the device TCTI, tpm2-tools for checks, and
# tpm2-openssl: MQTTS and certificate renewal sign their TLS handshakes in the TPM through it.
# tpm2-abrmd is the resource manager in user space: during one TLS handshake tpm2-openssl holds
# more TPM objects (the key, hash sequences, imported public keys) than the three the kernel's
# /dev/tpmrm0 allows a client, which the TPM answers with TPM_RC_OBJECT_MEMORY.
missing=""
for pkg in libtss2-fapi1 libtss2-tcti-device0 tpm2-tools tpm2-openssl tpm2-abrmd libtss2-tcti-tabrmd0 dbus; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  [ "$apt" = yes ] || die "missing Debian packages:$missing"
  say "installing$missing"
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
fi

install -D -m 0644 "$here/vitalseal.sysusers" /usr/lib/sysusers.d/vitalseal.conf
systemd-sysusers /usr/lib/sysusers.d/vitalseal.conf
install -D -m 0644 "$here/60-vitalseal-tpm.rules" /etc/udev/rules.d/60-vitalseal-tpm.rules
install -D -m 0644 "$here/vitalseal-agent.service" /etc/systemd/system/vitalseal-agent.service
install -d -m 0755 /usr/local/bin
ln -sfn "$checkout/scripts/bin/vitalseal.mjs" /usr/local/bin/vitalseal
# The unit runs the agent as one bundled module with plain node (no TypeScript loader: about 35 MiB
# less memory; docs/agent.md, "Footprint"). Built from this checkout, so run this again after an update.
if [ "$build" = yes ]; then
  (cd "$checkout" && "$node" --import tsx scripts/build-agent.ts) || die "building the agent bundle failed"
fi
[ -e "$checkout/dist/agent/vitalseal-agent.mjs" ] || die "$checkout/dist/agent/vitalseal-agent.mjs missing: run 'npm run build:agent' there (or this without --no-build)"
install -d -m 0755 /usr/local/lib/vitalseal
ln -sfn "$checkout/dist/agent/vitalseal-agent.mjs" /usr/local/lib/vitalseal/vitalseal-agent.mjs
install -d -m 0750 -o root -g vitalseal /etc/vitalseal
# The unit's StateDirectory= makes it at the first start; made now, `sudo -u vitalseal vitalseal
# keys create ...` works before that (systemd adopts it as it is).
install -d -m 0700 -o vitalseal -g vitalseal /var/lib/vitalseal
systemctl enable tpm2-abrmd.service vitalseal-agent.service
say "installed: user vitalseal ($(id -Gn vitalseal | tr ' ' ',')), udev rules, tpm2-abrmd.service and vitalseal-agent.service (enabled)"

# In a running system (not a chroot) apply the rules and units now.
if [ -d /run/systemd/system ] && [ "$(stat -c %d:%i /)" = "$(stat -c %d:%i /proc/1/root/. 2>/dev/null)" ]; then
  udevadm control --reload
  udevadm trigger --action=add --subsystem-match=tpm --subsystem-match=tpmrm
  systemctl daemon-reload
  # D-Bus reads tpm2-abrmd's bus policy at start; a reload makes a freshly installed one count.
  systemctl reload dbus.service 2>/dev/null || true
  systemctl start tpm2-abrmd.service || say "tpm2-abrmd did not start (is there a TPM? journalctl -u tpm2-abrmd)"
  if [ "$start" = yes ] && [ -e /etc/vitalseal/agent.yaml ]; then
    systemctl restart vitalseal-agent.service
    say "vitalseal-agent restarted"
  elif [ ! -e /etc/vitalseal/agent.yaml ]; then
    say "next: write /etc/vitalseal/agent.yaml (root:vitalseal, 0640), then: systemctl start vitalseal-agent"
  fi
fi
