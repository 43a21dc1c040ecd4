/**
 * The small pure parts of MQTTS: topics and content types, the tpm2 provider's settings and its
 * OpenSSL configuration, the broker configuration template and access rules,
 * the error mapping, and the manual timers the other tests rely on.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { dynsecConfig, renderTemplate, TEMPLATE_PATH } from '../../scripts/lib/mosquitto.ts';
import { ManualTimers } from '../../src/transport/timers.ts';
import { mapConnectionError } from '../../src/transport/mqtts/tls.ts';
import { TPM2_PROPERTY_QUERY, tpm2OpensslConfig, tpmRmHint } from '../../src/transport/mqtts/tpm2-provider.ts';
import { contentTypeFor, deviceIdFromTopic, formatFromContentType, hasCoseTag, INGEST_SUBSCRIPTION, vitalsTopic } from '../../src/transport/mqtts/topics.ts';
import { CertificateError, PeerIncompatible, TransportError, UplinkRejected } from '../../src/util/errors.ts';

describe('topics and content types', () => {
  it('a device publishes on vitals/<id>/v1; the ingest reads the id back, and nothing else parses', () => {
    assert.equal(vitalsTopic('bed-7'), 'vitals/bed-7/v1');
    assert.equal(INGEST_SUBSCRIPTION, '$share/vitalseal/vitals/+/v1');
    assert.equal(deviceIdFromTopic('vitals/bed-7/v1'), 'bed-7');
    for (const t of ['vitals/bed-7/v2', 'vitals/bed-7', 'vitals/bed-7/v1/x', 'vitals//v1', 'vitals/+/v1', 'vitals/#/v1', 'vital/bed-7/v1', '/vitals/bed-7/v1', 'vitals/-bed/v1', `vitals/${'a'.repeat(65)}/v1`]) {
      assert.equal(deviceIdFromTopic(t), undefined, t);
    }
    assert.throws(() => vitalsTopic('bed/7'), RangeError);
    assert.throws(() => vitalsTopic('+'), RangeError);
  });

  it('content types: ours round-trip; parameter quoting, case and spacing vary (RFC 9110 §8.3.1); anything else is not COSE', () => {
    for (const f of ['cose-encrypt', 'cose-encrypt0'] as const) assert.equal(formatFromContentType(contentTypeFor(f)), f);
    assert.equal(formatFromContentType('Application/COSE;cose-type=cose-encrypt0'), 'cose-encrypt0');
    assert.equal(formatFromContentType('application/cose ; COSE-TYPE = "cose-encrypt"'), 'cose-encrypt');
    for (const t of [undefined, '', 'application/cose', 'application/cose; cose-type="cose-sign1"', 'application/cose; cose-type="COSE-ENCRYPT"',
      'application/cose; cose-type="cose-encrypt', 'application/json', `application/cose; cose-type="cose-encrypt"${' '.repeat(200)}`]) {
      assert.equal(formatFromContentType(t), undefined, String(t));
    }
  });

  it('the COSE tag guard: tag 96 for COSE_Encrypt, tag 16 for COSE_Encrypt0 (RFC 9052 §2)', () => {
    assert.ok(hasCoseTag(Uint8Array.of(0xd8, 0x60, 0x84), 'cose-encrypt'));
    assert.ok(hasCoseTag(Uint8Array.of(0xd0, 0x83), 'cose-encrypt0'));
    assert.ok(!hasCoseTag(Uint8Array.of(0xd0, 0x83), 'cose-encrypt'));
    assert.ok(!hasCoseTag(Uint8Array.of(0xd8, 0x60, 0x84), 'cose-encrypt0'));
    assert.ok(!hasCoseTag(new TextEncoder().encode('{"hr":72}'), 'cose-encrypt'));
    assert.ok(!hasCoseTag(Uint8Array.of(0xd8), 'cose-encrypt'));
  });
});

describe('the tpm2 provider', () => {
  it('the OpenSSL configuration: the provider by path, digests, RNG and ciphers kept in software, as s_client is told', () => {
    const conf = tpm2OpensslConfig('/usr/lib/x86_64-linux-gnu/ossl-modules/tpm2.so');
    assert.match(conf, /^openssl_conf = /m);
    assert.equal(TPM2_PROPERTY_QUERY, '?provider=tpm2,tpm2.digest!=yes,tpm2.rand!=yes,tpm2.cipher!=yes');
    assert.match(conf, /^module = \/usr\/lib\/x86_64-linux-gnu\/ossl-modules\/tpm2\.so$/m);
    assert.match(conf, /^default_properties = \?provider=tpm2,tpm2\.digest!=yes,tpm2\.rand!=yes,tpm2\.cipher!=yes$/m);
    assert.match(conf, /\[vitalseal_default\]\nactivate = 1/);
  });

  it('a TLS failure through the kernel\'s resource manager names the limit and the fix; other TCTIs get no hint', () => {
    for (const tcti of ['device:/dev/tpmrm0', 'device:/dev/tpm0']) {
      const hint = tpmRmHint(tcti);
      assert.match(hint, /three TPM objects/);
      assert.match(hint, /tpm2-abrmd/);
      assert.match(hint, /tabrmd:bus_type=system/);
      assert.ok(hint.includes(tcti));
    }
    for (const tcti of ['tabrmd:bus_type=system', 'tabrmd:bus_name=com.intel.tss2.Tabrmd,bus_type=session', 'swtcp:host=127.0.0.1,port=2321', '']) assert.equal(tpmRmHint(tcti), '');
  });
});

describe('broker configuration', () => {
  it('the template fills every placeholder, refuses a missing one, and keeps TLS 1.3, client certificates and the CRL on the TLS listener', () => {
    const t = readFileSync(TEMPLATE_PATH, 'utf8');
    const values = { DIR: '/d', BIND: '127.0.0.1', AUTOSAVE_SECONDS: '60', MAX_QUEUED_MESSAGES: '100', MAX_PACKET_SIZE: '1024', DYNSEC_PLUGIN: '/p.so', PLAINTEXT_LISTENER: '', TLS_PORT: '8883' };
    const conf = renderTemplate(t, values);
    assert.doesNotMatch(conf, /\{\{/);
    for (const line of ['tls_version tlsv1.3', 'require_certificate true', 'use_identity_as_username true', 'crlfile /d/crl.pem', 'set_tcp_nodelay true', 'persistence true', 'allow_anonymous false', 'listener 8883 127.0.0.1', 'per_listener_settings true']) {
      assert.ok(conf.split('\n').includes(line), line);
    }
    assert.doesNotMatch(conf, /^acl_file/m, "topic rules come from dynsec, not acl_file");
    assert.throws(() => renderTemplate(t, { ...values, DIR: undefined as unknown as string }), /DIR/);
  });

  it('access rules: one role per device (its own topic only), the ingest\'s share; devices and services never share a name', () => {
    const c = dynsecConfig(['bed-1', 'bed-2'], ['ingest.example']) as {
      defaultACLAccess: Record<string, boolean>; clients: { username: string; roles: { rolename: string }[] }[];
      roles: { rolename: string; acls: { acltype: string; topic: string; allow: boolean }[] }[];
    };
    assert.deepEqual(c.defaultACLAccess, { publishClientSend: false, publishClientReceive: false, subscribe: false, unsubscribe: true });
    assert.deepEqual(c.clients.map((x) => [x.username, x.roles[0]?.rolename]), [['bed-1', 'device-bed-1'], ['bed-2', 'device-bed-2'], ['ingest.example', 'ingest']]);
    assert.deepEqual(c.roles.find((r) => r.rolename === 'device-bed-1')?.acls, [{ acltype: 'publishClientSend', topic: 'vitals/bed-1/#', priority: 0, allow: true }]);
    assert.deepEqual(c.roles.find((r) => r.rolename === 'ingest')?.acls.map((a) => [a.acltype, a.topic]), [['subscribeLiteral', '$share/vitalseal/vitals/+/v1'], ['publishClientReceive', 'vitals/+/v1']]);
    assert.throws(() => dynsecConfig(['ingest.example'], ['ingest.example']), /listed twice/);
    assert.throws(() => dynsecConfig(['bed/1'], []), /not a device id/);
    assert.throws(() => dynsecConfig(['#'], []), /not a device id/);
  });
});

describe('connection errors', () => {
  const err = (code: string, message = 'x') => Object.assign(new Error(message), { code });

  it('maps OpenSSL and socket failures to one typed error each', () => {
    assert.ok(mapConnectionError(err('ERR_SSL_SSLV3_ALERT_CERTIFICATE_REVOKED'), 'b') instanceof UplinkRejected);
    assert.ok(mapConnectionError(err('ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED'), 'b') instanceof UplinkRejected);
    assert.ok(mapConnectionError(err('EPROTO', 'ssl3_read_bytes:sslv3 alert certificate expired:../ssl/x.c'), 'b') instanceof UplinkRejected);
    assert.ok(mapConnectionError(err('EPROTO', 'ssl3_read_bytes:tlsv1 alert protocol version:../x.c'), 'b') instanceof PeerIncompatible);
    const expired = mapConnectionError(err('CERT_HAS_EXPIRED'), 'b');
    assert.ok(expired instanceof CertificateError && expired.code === 'expired');
    const refused = mapConnectionError(err('ECONNREFUSED'), 'b');
    assert.ok(refused instanceof TransportError && refused.code === 'connection-refused');
    const other = mapConnectionError(new Error('something odd'), 'b');
    assert.ok(other instanceof TransportError && other.code === 'connection-failed');
    const typed = new CertificateError('pin-mismatch', 'p');
    assert.equal(mapConnectionError(typed, 'b'), typed);
  });
});

describe('ManualTimers', () => {
  it('fires due timers in time order, including ones set while advancing; cleared ones never', () => {
    const t = new ManualTimers(1000);
    const log: string[] = [];
    t.setTimeout(() => log.push('b@30'), 30);
    const gone = t.setTimeout(() => log.push('never'), 10);
    t.setTimeout(() => {
      log.push('a@20');
      t.setTimeout(() => log.push('c@25'), 5);
    }, 20);
    t.clearTimeout(gone);
    t.advance(29);
    assert.deepEqual(log, ['a@20', 'c@25']);
    assert.equal(t.now(), 1029);
    t.advance(1);
    assert.deepEqual(log, ['a@20', 'c@25', 'b@30']);
    assert.equal(t.pending, 0);
    assert.throws(() => t.advance(-1), RangeError);
  });
});
