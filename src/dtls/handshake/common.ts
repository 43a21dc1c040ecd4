/**
 * Pieces both handshake sides share: the state interface, the unexpected-message error, Finished
 * verification, the client's certificate flight, and extension policing.
 */
import { equalBytes, zeroize } from '../../util/bytes.ts';
import { PeerMisbehaved } from '../../util/errors.ts';
import { handshakeTypeName, HandshakeType } from '../messages/constants.ts';
import type { Extension } from '../messages/extensions.ts';
import { encodeHandshake, type Finished, type HandshakeMessage } from '../messages/handshake.ts';
import type { HandshakeContext } from './context.ts';
import type { KeySchedule } from './key-schedule.ts';
import type { Transcript } from './transcript.ts';

/**
 * One handshake state (rustls style): it holds only what is valid at this point, and `handle`
 * consumes it and returns the next state. A state is used once.
 */
export interface HandshakeState {
  /** For diagnostics and tests: which message this state waits for. */
  readonly name: string;
  handle(cx: HandshakeContext, msg: HandshakeMessage): Promise<HandshakeState>;
}

export function unexpected(state: string, msg: HandshakeMessage): PeerMisbehaved {
  return new PeerMisbehaved('unexpected-message', `${handshakeTypeName(msg.type)} while waiting for ${state}`);
}

/** RFC 8446 §4.2: an extension not allowed in a message is fatal (unsupported_extension for ones we did not offer). */
export function allowOnly(extensions: readonly Extension[], allowed: readonly number[], what: string): void {
  for (const e of extensions) {
    if (!allowed.includes(e.type)) throw new PeerMisbehaved('unsupported-extension', `${what}: extension ${e.type} not allowed`);
  }
}

/** RFC 8446 §4.4.4: checks the peer's Finished, then adds it to the transcript. */
export function checkFinished(ks: KeySchedule, baseKey: Uint8Array, transcript: Transcript, msg: Finished, who: string): void {
  const expected = ks.verifyData(baseKey, transcript.hash());
  if (!equalBytes(expected, msg.verifyData)) throw new PeerMisbehaved('bad-finished', `${who} Finished does not verify`);
  transcript.add(encodeHandshake(msg));
}

/** Encodes, adds to the transcript, and sends. */
export function sendMessage(cx: HandshakeContext, transcript: Transcript, msg: HandshakeMessage): void {
  const bytes = encodeHandshake(msg);
  transcript.add(bytes);
  cx.send(bytes);
}

export function finishedMessage(ks: KeySchedule, baseKey: Uint8Array, transcript: Transcript): Finished {
  return { type: HandshakeType.finished, verifyData: ks.verifyData(baseKey, transcript.hash()) };
}

/** RFC 8446 §4.2.11.2: the binder of a ClientHello truncated before its binders, over a transcript prefix. */
export function computeBinder(ks: KeySchedule, psk: Uint8Array, external: boolean, prefix: Transcript, truncatedHello: Uint8Array): Uint8Array {
  const early = ks.earlySecret(psk);
  const key = ks.binderKey(early, external);
  try {
    return ks.verifyData(key, prefix.hashWith(truncatedHello));
  } finally {
    zeroize(early, key);
  }
}
