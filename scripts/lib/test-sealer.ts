/**
 * Sealing as devices do and opening as the ingest does, for test rigs and benchmarks: an ingest
 * X25519 key made when this runs, one SealingSession per device (ChaCha20-Poly1305), the device id
 * and sequence number in the protected header.
 *
 * @example
 *   const sealer = createTestSealer();
 *   const m = sealer.seal('bed-7', 1);           // an UplinkMessage with a sealed COSE_Encrypt
 *   sealer.open(m.payload);                      // { deviceId: 'bed-7', seq: 1 }
 */
import { getProvider } from '../../src/crypto/index.ts';
import { EpochKeyCache, Header, openCose, SealingSession, x25519PublicToPem, x25519Recipient } from '../../src/cose/index.ts';
import type { UplinkMessage } from '../../src/transport/types.ts';
import { systemClock } from '../../src/util/clock.ts';

export interface TestSealer {
  /** The ingest's X25519 public key (SPKI PEM), as a device pins it. */
  readonly publicKeyPem: string;
  /** A sealed COSE_Encrypt of `size` body bytes carrying `seq` and the device id in its protected header. */
  seal(deviceId: string, seq: number, size?: number): UplinkMessage;
  /** Opens a sealed payload with the ingest key; throws on tampering. */
  open(payload: Uint8Array): { deviceId: string; seq: number };
  destroy(): void;
}

export function createTestSealer(): TestSealer {
  const provider = getProvider();
  const ingestKey = provider.x25519Generate();
  const recipient = x25519Recipient(provider, ingestKey.privateKey);
  const cache = new EpochKeyCache(1024);
  const sessions = new Map<string, SealingSession>();
  return {
    publicKeyPem: x25519PublicToPem(ingestKey.publicKey),
    seal(deviceId, seq, size = 200) {
      let session = sessions.get(deviceId);
      if (session === undefined) {
        session = new SealingSession({ alg: 'chacha20-poly1305', recipientPublicKey: ingestKey.publicKey, clock: systemClock, maxMessages: 1_000_000 });
        sessions.set(deviceId, session);
      }
      const body = new Uint8Array(size);
      body.fill(seq & 0xff);
      const payload = session.seal(body, { protectedExtras: new Map<number, unknown>([[Header.DEVICE_ID, deviceId], [Header.SEQUENCE, seq]]) });
      return { deviceId, seq, payload, contentFormat: 'cose-encrypt' };
    },
    open(payload) {
      const opened = openCose(payload, { recipient, cache });
      const deviceId = opened.protected.get(Header.DEVICE_ID);
      const seq = opened.protected.get(Header.SEQUENCE);
      if (typeof deviceId !== 'string' || typeof seq !== 'number') throw new Error('sealed message without device id or sequence number');
      return { deviceId, seq };
    },
    destroy() {
      recipient.destroy();
    },
  };
}
