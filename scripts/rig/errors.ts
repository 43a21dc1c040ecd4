/** Why the rig could not do what it was asked: one code per kind of failure, for the caller to switch on. */
export type RigErrorCode =
  /** A host program or Debian package is missing and could not be installed. */
  | 'host-tools'
  /** A step needs root (debootstrap, file ownership in the image) and neither root nor sudo -n is available. */
  | 'privileges'
  /** A download (Debian archive, npm registry) failed or did not match its pinned checksum. */
  | 'download'
  /** A build step on the host failed. */
  | 'build'
  /** A build step inside the virtual machine (debootstrap's second stage, provisioning) failed. */
  | 'stage'
  /** The virtual machine did not finish in time. */
  | 'timeout'
  /** The guest reported something malformed, or a check inside the guest failed. */
  | 'guest'
  /** A result did not verify on the host (signature, architecture, TPM). */
  | 'verify'
  /** Wrong command-line use. */
  | 'usage';

export class RigError extends Error {
  readonly code: RigErrorCode;
  constructor(code: RigErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'RigError';
  }
}
