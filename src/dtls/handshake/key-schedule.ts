/**
 * The TLS 1.3 key schedule (RFC 8446 §7.1) with the DTLS 1.3 label prefix "dtls13"
 * (RFC 9147 §5.9), isolated so it can be checked against RFC 8448 with the TLS prefix "tls13 ".
 * Every suite here uses SHA-256 (HashLen 32).
 *
 * @example
 *   const ks = new KeySchedule(getProvider());            // prefix "dtls13"
 *   const early = ks.earlySecret(undefined);
 *   const hs = ks.handshakeSecret(early, ecdheShared);
 *   const { client, server } = ks.handshakeTrafficSecrets(hs, transcript.hash());
 */
import { hkdfExpand, hkdfExtract } from '../../crypto/hkdf.ts';
import type { CryptoProvider } from '../../crypto/provider.ts';
import { concatBytes, utf8, zeroize } from '../../util/bytes.ts';
import { Writer } from '../messages/codec.ts';
import type { DtlsCipherSuite } from '../suites.ts';

export const HASH_LENGTH = 32;

export type LabelPrefix = 'dtls13' | 'tls13 ';

export interface TrafficKeys {
  readonly key: Uint8Array;
  readonly iv: Uint8Array;
  /** RFC 9147 §4.2.3: the record-number encryption key. */
  readonly snKey: Uint8Array;
}

export interface SecretPair {
  readonly client: Uint8Array;
  readonly server: Uint8Array;
}

export class KeySchedule {
  readonly #emptyHash: Uint8Array;

  constructor(
    readonly provider: CryptoProvider,
    readonly prefix: LabelPrefix = 'dtls13',
  ) {
    this.#emptyHash = provider.sha256(new Uint8Array(0));
  }

  /** RFC 8446 §7.1 HkdfLabel, the `info` of HKDF-Expand-Label. */
  hkdfLabel(label: string, context: Uint8Array, length: number): Uint8Array {
    const w = new Writer(10 + label.length + context.length);
    w.u16(length);
    w.opaque(1, concatBytes(utf8(this.prefix), utf8(label)));
    w.opaque(1, context);
    return w.finish();
  }

  expandLabel(secret: Uint8Array, label: string, context: Uint8Array, length: number): Uint8Array {
    return hkdfExpand(this.provider, secret, this.hkdfLabel(label, context, length), length);
  }

  /** Derive-Secret(Secret, Label, Messages) given Transcript-Hash(Messages). */
  deriveSecret(secret: Uint8Array, label: string, transcriptHash: Uint8Array): Uint8Array {
    return this.expandLabel(secret, label, transcriptHash, HASH_LENGTH);
  }

  get emptyHash(): Uint8Array {
    return this.#emptyHash;
  }

  /** Early Secret = HKDF-Extract(0, PSK or 0s). */
  earlySecret(psk: Uint8Array | undefined): Uint8Array {
    return hkdfExtract(this.provider, undefined, psk ?? new Uint8Array(HASH_LENGTH));
  }

  /** binder_key: "ext binder" for external PSKs, "res binder" for resumption (RFC 8446 §7.1). */
  binderKey(earlySecret: Uint8Array, external: boolean): Uint8Array {
    return this.deriveSecret(earlySecret, external ? 'ext binder' : 'res binder', this.#emptyHash);
  }

  /** Handshake Secret = HKDF-Extract(Derive-Secret(early, "derived", ""), (EC)DHE or 0s). */
  handshakeSecret(earlySecret: Uint8Array, ecdhe: Uint8Array | undefined): Uint8Array {
    const derived = this.deriveSecret(earlySecret, 'derived', this.#emptyHash);
    try {
      return hkdfExtract(this.provider, derived, ecdhe ?? new Uint8Array(HASH_LENGTH));
    } finally {
      zeroize(derived);
    }
  }

  /** [sender]_handshake_traffic_secret over ClientHello...ServerHello. */
  handshakeTrafficSecrets(handshakeSecret: Uint8Array, helloHash: Uint8Array): SecretPair {
    return {
      client: this.deriveSecret(handshakeSecret, 'c hs traffic', helloHash),
      server: this.deriveSecret(handshakeSecret, 's hs traffic', helloHash),
    };
  }

  /** Master Secret = HKDF-Extract(Derive-Secret(hs, "derived", ""), 0). */
  masterSecret(handshakeSecret: Uint8Array): Uint8Array {
    return this.handshakeSecret(handshakeSecret, undefined);
  }

  /** [sender]_application_traffic_secret_0 over ClientHello...server Finished. */
  applicationTrafficSecrets(masterSecret: Uint8Array, serverFinishedHash: Uint8Array): SecretPair {
    return {
      client: this.deriveSecret(masterSecret, 'c ap traffic', serverFinishedHash),
      server: this.deriveSecret(masterSecret, 's ap traffic', serverFinishedHash),
    };
  }

  exporterMasterSecret(masterSecret: Uint8Array, serverFinishedHash: Uint8Array): Uint8Array {
    return this.deriveSecret(masterSecret, 'exp master', serverFinishedHash);
  }

  /** resumption_master_secret over ClientHello...client Finished. */
  resumptionMasterSecret(masterSecret: Uint8Array, clientFinishedHash: Uint8Array): Uint8Array {
    return this.deriveSecret(masterSecret, 'res master', clientFinishedHash);
  }

  /** RFC 8446 §4.6.1: the PSK a ticket stands for. */
  resumptionPsk(resumptionMasterSecret: Uint8Array, ticketNonce: Uint8Array): Uint8Array {
    return this.expandLabel(resumptionMasterSecret, 'resumption', ticketNonce, HASH_LENGTH);
  }

  /** RFC 8446 §4.4.4: finished_key = HKDF-Expand-Label(BaseKey, "finished", "", Hash.length). */
  finishedKey(baseKey: Uint8Array): Uint8Array {
    return this.expandLabel(baseKey, 'finished', new Uint8Array(0), HASH_LENGTH);
  }

  /** verify_data = HMAC(finished_key, Transcript-Hash(...)). */
  verifyData(baseKey: Uint8Array, transcriptHash: Uint8Array): Uint8Array {
    const key = this.finishedKey(baseKey);
    try {
      return this.provider.hmacSha256(key, transcriptHash);
    } finally {
      zeroize(key);
    }
  }

  /** RFC 8446 §7.3 and RFC 9147 §4.2.3: write key, IV and record-number key from a traffic secret. */
  trafficKeys(secret: Uint8Array, suite: DtlsCipherSuite): TrafficKeys {
    const empty = new Uint8Array(0);
    return {
      key: this.expandLabel(secret, 'key', empty, suite.keyLength),
      iv: this.expandLabel(secret, 'iv', empty, 12),
      snKey: this.expandLabel(secret, 'sn', empty, suite.keyLength),
    };
  }

  /** RFC 8446 §7.2: application_traffic_secret_N+1. */
  nextTrafficSecret(secret: Uint8Array): Uint8Array {
    return this.expandLabel(secret, 'traffic upd', new Uint8Array(0), HASH_LENGTH);
  }
}
