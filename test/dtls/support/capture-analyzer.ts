/**
 * Walks a captured DTLS 1.3 handshake with its key-log secrets using only vitalseal's own DTLS
 * layers: record parsing, record-number unmasking and decryption (ReadEpoch), fragment
 * reassembly and message decoding. What it returns the tests then check against the transcript.
 */
import { getProvider } from '../../../src/crypto/index.ts';
import { HandshakeReassembler } from '../../../src/dtls/connection/reassembly.ts';
import { KeySchedule } from '../../../src/dtls/handshake/key-schedule.ts';
import { ContentType } from '../../../src/dtls/messages/constants.ts';
import { decodeHandshake, type HandshakeMessage, type ServerHello } from '../../../src/dtls/messages/handshake.ts';
import { parseDatagram, readAck, readAlert, readHandshakeFragments, type RecordNumber } from '../../../src/dtls/messages/record.ts';
import { ReadEpoch } from '../../../src/dtls/record/protection.ts';
import { suiteById, type DtlsCipherSuite } from '../../../src/dtls/suites.ts';
import { fromHex } from '../../../src/util/bytes.ts';
import { keylogSecret, type Capture } from './captures.ts';

export type Side = 'client' | 'server';

export interface DecodedMessage {
  readonly from: Side;
  readonly messageSeq: number;
  /** TLS-style bytes, as the transcript hashes them. */
  readonly bytes: Uint8Array;
  readonly message: HandshakeMessage;
  /** Epoch of the record that completed the message. */
  readonly epoch: number;
}

export interface RecordSummary {
  readonly from: Side;
  readonly epoch: number;
  readonly sequenceNumber: number;
  readonly contentType: number;
}

export interface Analysis {
  readonly suite: DtlsCipherSuite;
  readonly messages: DecodedMessage[];
  readonly encryptedRecords: number;
  readonly decryptedRecords: number;
  readonly records: RecordSummary[];
  readonly acks: { from: Side; numbers: RecordNumber[] }[];
  readonly alerts: { from: Side; level: number; description: number }[];
  readonly applicationData: { from: Side; data: Uint8Array }[];
}

const ks = new KeySchedule(getProvider());

export function analyze(cap: Capture): Analysis {
  const provider = getProvider();
  const reassembly: Record<Side, HandshakeReassembler> = { client: new HandshakeReassembler(), server: new HandshakeReassembler() };
  const messages: DecodedMessage[] = [];
  const records: RecordSummary[] = [];
  const acks: Analysis['acks'] = [];
  const alerts: Analysis['alerts'] = [];
  const applicationData: Analysis['applicationData'] = [];
  let suite: DtlsCipherSuite | undefined;
  let epochs: Record<Side, Map<number, ReadEpoch>> | undefined;
  let encryptedRecords = 0;
  let decryptedRecords = 0;

  const handshakePayload = (from: Side, epoch: number, payload: Uint8Array) => {
    for (const f of readHandshakeFragments(payload)) reassembly[from].add(f);
    for (const ready of reassembly[from].takeReady()) {
      const message = decodeHandshake(ready.message);
      messages.push({ from, messageSeq: ready.messageSeq, bytes: ready.message, message, epoch });
      if (message.type === 2 && from === 'server') {
        const sh = message as ServerHello;
        const s = suiteById(sh.cipherSuite);
        if (s === undefined) throw new Error(`unknown suite ${sh.cipherSuite}`);
        suite = s;
        // The last ServerHello fixes the suite; HRR and ServerHello name the same one.
        epochs = {
          client: new Map([
            [2, new ReadEpoch(provider, s, 2, ks.trafficKeys(fromHex(keylogSecret(cap, 'CLIENT_HANDSHAKE_TRAFFIC_SECRET')), s))],
            [3, new ReadEpoch(provider, s, 3, ks.trafficKeys(fromHex(keylogSecret(cap, 'CLIENT_TRAFFIC_SECRET_0')), s))],
          ]),
          server: new Map([
            [2, new ReadEpoch(provider, s, 2, ks.trafficKeys(fromHex(keylogSecret(cap, 'SERVER_HANDSHAKE_TRAFFIC_SECRET')), s))],
            [3, new ReadEpoch(provider, s, 3, ks.trafficKeys(fromHex(keylogSecret(cap, 'SERVER_TRAFFIC_SECRET_0')), s))],
          ]),
        };
      }
    }
  };

  for (const d of cap.datagrams) {
    const { records: wire, error } = parseDatagram(fromHex(d.hex), 0);
    if (error !== undefined) throw error;
    for (const rec of wire) {
      if (rec.kind === 'plaintext') {
        records.push({ from: d.from, epoch: 0, sequenceNumber: rec.sequenceNumber, contentType: rec.contentType });
        if (rec.contentType === ContentType.handshake) handshakePayload(d.from, 0, rec.fragment);
        continue;
      }
      encryptedRecords++;
      const epoch = epochs?.[d.from].get(rec.epochBits);
      if (epoch === undefined) throw new Error(`frame ${d.frame}: no keys for epoch bits ${rec.epochBits}`);
      const opened = epoch.unprotect(rec);
      if (!opened.ok) throw new Error(`frame ${d.frame}: record dropped (${opened.reason})`);
      decryptedRecords++;
      const { contentType, content, sequenceNumber } = opened.record;
      records.push({ from: d.from, epoch: epoch.epoch, sequenceNumber, contentType });
      switch (contentType) {
        case ContentType.handshake:
          handshakePayload(d.from, epoch.epoch, content);
          break;
        case ContentType.ack:
          acks.push({ from: d.from, numbers: readAck(content) });
          break;
        case ContentType.alert:
          alerts.push({ from: d.from, ...readAlert(content) });
          break;
        case ContentType.applicationData:
          applicationData.push({ from: d.from, data: Uint8Array.from(content) });
          break;
        default:
          throw new Error(`frame ${d.frame}: content type ${contentType}`);
      }
    }
  }
  if (suite === undefined) throw new Error('no ServerHello');
  return { suite, messages, encryptedRecords, decryptedRecords, records, acks, alerts, applicationData };
}
