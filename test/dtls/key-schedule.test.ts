import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { getProvider, PROVIDER_NAMES } from '../../src/crypto/index.ts';
import { KeySchedule } from '../../src/dtls/handshake/key-schedule.ts';
import { Transcript } from '../../src/dtls/handshake/transcript.ts';
import { CIPHER_SUITES } from '../../src/dtls/suites.ts';
import { fromHex, toHex } from '../../src/util/bytes.ts';
import { loadVectors } from '../support/vectors.ts';

type V = Record<string, string | boolean | unknown[]>;
const file = loadVectors<V>('tls13-rfc8448-simple-1rtt.json');
const rfc = file.vectors.find((v) => v['id'] === 'rfc8448-section3-simple-1rtt') as V;
const extras = file.vectors.find((v) => v['id'] === 'rfc8448-section3-derived-extras') as V;
const dtls = file.vectors.find((v) => v['id'] === 'dtls13-labels-over-rfc8448-section3-inputs') as V;
const hex = (v: V, k: string): string => {
  const x = v[k];
  if (typeof x !== 'string') throw new Error(`vector lacks ${k}`);
  return x;
};
const b = (v: V, k: string) => fromHex(hex(v, k));
const gcm = CIPHER_SUITES.TLS_AES_128_GCM_SHA256;

for (const providerName of PROVIDER_NAMES) {
  const p = getProvider(providerName);

  describe(`key schedule: RFC 8448 §3 with the TLS 1.3 prefix (${providerName} provider)`, () => {
    const ks = new KeySchedule(p, 'tls13 ');
    const t = new Transcript(p);
    t.add(b(rfc, 'client_hello'));
    t.add(b(rfc, 'server_hello'));
    const helloHash = t.hash();
    for (const m of ['encrypted_extensions', 'certificate', 'certificate_verify', 'server_finished_message']) t.add(b(rfc, m));
    const serverFinishedHash = t.hash();
    t.add(b(rfc, 'client_finished_message'));
    const clientFinishedHash = t.hash();

    it('HkdfLabel encodings match the RFC (§7.1)', () => {
      for (const ex of rfc['hkdf_expand_label_info_examples'] as { label: string; context: string; length: number; info: string }[]) {
        const label = ex.label.replace(/^tls13 /, '');
        assert.equal(toHex(ks.hkdfLabel(label, fromHex(ex.context), ex.length)), ex.info, ex.label);
      }
    });

    it('X25519 shared secret and transcript hashes', () => {
      assert.equal(toHex(p.x25519(b(rfc, 'client_x25519_private'), b(rfc, 'server_x25519_public'))), hex(rfc, 'ecdhe_shared_secret'));
      assert.equal(toHex(ks.emptyHash), hex(rfc, 'empty_hash'));
      assert.equal(toHex(helloHash), hex(rfc, 'transcript_hash_client_hello_server_hello'));
      assert.equal(toHex(serverFinishedHash), hex(rfc, 'transcript_hash_client_hello_to_server_finished'));
      assert.equal(toHex(clientFinishedHash), hex(rfc, 'transcript_hash_client_hello_to_client_finished'));
    });

    it('every secret from early to resumption master', () => {
      const early = ks.earlySecret(undefined);
      assert.equal(toHex(early), hex(rfc, 'early_secret'));
      assert.equal(toHex(ks.deriveSecret(early, 'derived', ks.emptyHash)), hex(rfc, 'derived_secret_for_handshake'));
      const hs = ks.handshakeSecret(early, b(rfc, 'ecdhe_shared_secret'));
      assert.equal(toHex(hs), hex(rfc, 'handshake_secret'));
      const hts = ks.handshakeTrafficSecrets(hs, helloHash);
      assert.equal(toHex(hts.client), hex(rfc, 'client_handshake_traffic_secret'));
      assert.equal(toHex(hts.server), hex(rfc, 'server_handshake_traffic_secret'));
      assert.equal(toHex(ks.deriveSecret(hs, 'derived', ks.emptyHash)), hex(rfc, 'derived_secret_for_master'));
      const master = ks.masterSecret(hs);
      assert.equal(toHex(master), hex(rfc, 'master_secret'));
      const ats = ks.applicationTrafficSecrets(master, serverFinishedHash);
      assert.equal(toHex(ats.client), hex(rfc, 'client_application_traffic_secret_0'));
      assert.equal(toHex(ats.server), hex(rfc, 'server_application_traffic_secret_0'));
      assert.equal(toHex(ks.exporterMasterSecret(master, serverFinishedHash)), hex(rfc, 'exporter_master_secret'));
      assert.equal(toHex(ks.resumptionMasterSecret(master, clientFinishedHash)), hex(extras, 'resumption_master_secret'));
    });

    it('traffic keys, finished keys and verify_data (§4.4.4, §7.3)', () => {
      const hts = { client: b(rfc, 'client_handshake_traffic_secret'), server: b(rfc, 'server_handshake_traffic_secret') };
      const ats = { client: b(rfc, 'client_application_traffic_secret_0'), server: b(rfc, 'server_application_traffic_secret_0') };
      assert.equal(toHex(ks.trafficKeys(hts.server, gcm).key), hex(rfc, 'server_handshake_write_key'));
      assert.equal(toHex(ks.trafficKeys(hts.server, gcm).iv), hex(rfc, 'server_handshake_write_iv'));
      assert.equal(toHex(ks.trafficKeys(hts.client, gcm).key), hex(rfc, 'client_handshake_write_key'));
      assert.equal(toHex(ks.trafficKeys(hts.client, gcm).iv), hex(rfc, 'client_handshake_write_iv'));
      assert.equal(toHex(ks.trafficKeys(ats.server, gcm).key), hex(rfc, 'server_application_write_key'));
      assert.equal(toHex(ks.trafficKeys(ats.server, gcm).iv), hex(rfc, 'server_application_write_iv'));
      assert.equal(toHex(ks.trafficKeys(ats.client, gcm).key), hex(rfc, 'client_application_write_key'));
      assert.equal(toHex(ks.trafficKeys(ats.client, gcm).iv), hex(rfc, 'client_application_write_iv'));
      assert.equal(toHex(ks.finishedKey(hts.server)), hex(rfc, 'server_finished_key'));
      assert.equal(toHex(ks.finishedKey(hts.client)), hex(rfc, 'client_finished_key'));
      // The server Finished covers ClientHello..CertificateVerify; the client's runs to the server Finished.
      const t = new Transcript(p);
      for (const m of ['client_hello', 'server_hello', 'encrypted_extensions', 'certificate', 'certificate_verify']) t.add(b(rfc, m));
      assert.equal(toHex(ks.verifyData(hts.server, t.hash())), hex(rfc, 'server_finished_verify_data'));
      t.add(b(rfc, 'server_finished_message'));
      assert.equal(toHex(ks.verifyData(hts.client, t.hash())), hex(rfc, 'client_finished_verify_data'));
      assert.equal(hex(rfc, 'server_finished_message').slice(8), hex(rfc, 'server_finished_verify_data'));
    });

    it('a wrong input changes every output (negative)', () => {
      const hs = ks.handshakeSecret(ks.earlySecret(undefined), new Uint8Array(32).fill(1));
      assert.notEqual(toHex(hs), hex(rfc, 'handshake_secret'));
      const other = new KeySchedule(p, 'dtls13');
      assert.notEqual(toHex(other.finishedKey(b(rfc, 'server_handshake_traffic_secret'))), hex(rfc, 'server_finished_key'));
    });
  });

  describe(`key schedule: the "dtls13" prefix over the same inputs (${providerName} provider)`, () => {
    const ks = new KeySchedule(p);
    it('matches the derived DTLS values, including the record-number keys (RFC 9147 §4.2.3, §5.9)', () => {
      assert.equal(ks.prefix, 'dtls13');
      assert.equal(toHex(ks.hkdfLabel('key', new Uint8Array(0), 16)), '00100964746c733133' + '6b6579' + '00');
      const early = ks.earlySecret(undefined);
      assert.equal(toHex(early), hex(dtls, 'early_secret'));
      const hs = ks.handshakeSecret(early, b(rfc, 'ecdhe_shared_secret'));
      assert.equal(toHex(hs), hex(dtls, 'handshake_secret'));
      const hts = ks.handshakeTrafficSecrets(hs, b(rfc, 'transcript_hash_client_hello_server_hello'));
      assert.equal(toHex(hts.client), hex(dtls, 'client_handshake_traffic_secret'));
      assert.equal(toHex(hts.server), hex(dtls, 'server_handshake_traffic_secret'));
      const master = ks.masterSecret(hs);
      assert.equal(toHex(master), hex(dtls, 'master_secret'));
      const ats = ks.applicationTrafficSecrets(master, b(rfc, 'transcript_hash_client_hello_to_server_finished'));
      assert.equal(toHex(ats.client), hex(dtls, 'client_application_traffic_secret_0'));
      assert.equal(toHex(ats.server), hex(dtls, 'server_application_traffic_secret_0'));
      assert.equal(toHex(ks.resumptionMasterSecret(master, b(rfc, 'transcript_hash_client_hello_to_client_finished'))), hex(dtls, 'resumption_master_secret'));
      for (const [who, secret] of [['server_handshake', hts.server], ['client_handshake', hts.client], ['server_application', ats.server], ['client_application', ats.client]] as const) {
        const k = ks.trafficKeys(secret, gcm);
        assert.equal(toHex(k.key), hex(dtls, `${who}_write_key`), who);
        assert.equal(toHex(k.iv), hex(dtls, `${who}_write_iv`), who);
        assert.equal(toHex(k.snKey), hex(dtls, `${who}_sn_key`), who);
      }
      assert.equal(toHex(ks.finishedKey(hts.server)), hex(dtls, 'server_finished_key'));
      assert.equal(toHex(ks.finishedKey(hts.client)), hex(dtls, 'client_finished_key'));
    });
  });
}

describe('transcript: HelloRetryRequest message_hash (RFC 8446 §4.4.1)', () => {
  it('replaces ClientHello1 by 254 || 00 00 20 || Hash(ClientHello1)', () => {
    const p = getProvider();
    const t = new Transcript(p);
    const ch1 = Uint8Array.of(1, 0, 0, 2, 0xaa, 0xbb);
    t.add(ch1);
    t.replaceWithMessageHash();
    const expected = p.sha256(Uint8Array.from([254, 0, 0, 32, ...p.sha256(ch1)]));
    assert.equal(toHex(t.hash()), toHex(expected));
  });
});
