/**
 * HTTPS for ingest tests: a server certificate for 127.0.0.1 from the test fleet PKI (key generated
 * now), the dev-CA-like issuer the enrolment endpoint uses, and a small request helper that trusts
 * only the fleet root.
 */
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { request } from 'node:https';
import type { IncomingHttpHeaders } from 'node:http';
import type { DeviceIssuer } from '../../../src/ingest/http/est.ts';
import { keyObjectSigner } from '../../../src/keystore/signer.ts';
import type { Certificate } from '../../../src/pki/certificate.ts';
import { createCsr } from '../../../src/pki/csr.ts';
import { issueDeviceCertificate, issueServiceCertificate } from '../../../src/pki/issue.ts';
import { pemEncode } from '../../../src/pki/pem.ts';
import type { TestPki } from '../../pki/fixtures.ts';

export interface KeyAndCert {
  readonly key: KeyObject;
  readonly keyPem: string;
  readonly cert: Certificate;
  readonly certPem: string;
}

export async function serverCertificate(pki: TestPki): Promise<KeyAndCert> {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const csr = await createCsr({ signer: keyObjectSigner(privateKey), subject: { commonName: '127.0.0.1' } });
  const cert = await issueServiceCertificate({ ca: pki.ca, csr, ipAddresses: ['127.0.0.1'], dnsNames: ['localhost'], now: pki.now });
  return { key: privateKey, keyPem: privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(), cert, certPem: pemEncode('CERTIFICATE', cert.der) + pemEncode('CERTIFICATE', pki.issuing.der) };
}

/** An operator's client certificate: a service certificate with clientAuth and no device id. */
export async function operatorCertificate(pki: TestPki, name: string): Promise<KeyAndCert> {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const csr = await createCsr({ signer: keyObjectSigner(privateKey), subject: { commonName: name } });
  const cert = await issueServiceCertificate({ ca: pki.ca, csr, dnsNames: [`${name}.operators.invalid`], clientAuth: true, now: pki.now });
  return { key: privateKey, keyPem: privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(), cert, certPem: pemEncode('CERTIFICATE', cert.der) + pemEncode('CERTIFICATE', pki.issuing.der) };
}

export function pemOf(k: KeyObject): string {
  return k.export({ format: 'pem', type: 'pkcs8' }).toString();
}

/** The test PKI's issuing CA as the enrolment endpoint's issuer; `revoked` records what it was asked to revoke. */
export function testIssuer(pki: TestPki): DeviceIssuer & { readonly revoked: { serial: string; reason: string }[] } {
  const revoked: { serial: string; reason: string }[] = [];
  return {
    revoked,
    chain: [pki.issuing, pki.root],
    issueDevice: (csr, deviceId, now) => issueDeviceCertificate({ ca: pki.ca, csr, deviceId, now }),
    async revoke(serial, _now, reason) {
      revoked.push({ serial, reason });
    },
  };
}

export interface Reply {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
  text(): string;
  json<T = Record<string, unknown>>(): T;
}

export interface RequestOptions {
  readonly method?: string;
  readonly token?: string;
  readonly headers?: Record<string, string>;
  readonly body?: string | Uint8Array;
  /** Client certificate (PEM chain) and key. */
  readonly cert?: string;
  readonly key?: string;
  readonly maxVersion?: 'TLSv1.2' | 'TLSv1.3';
}

export function httpsRequest(base: string, path: string, rootPem: string, o: RequestOptions = {}): Promise<Reply> {
  const url = new URL(path, base);
  return new Promise((resolve, reject) => {
    const req = request(url, {
      method: o.method ?? 'GET',
      ca: rootPem,
      headers: { ...(o.token === undefined ? {} : { authorization: `Bearer ${o.token}` }), ...o.headers },
      ...(o.cert === undefined ? {} : { cert: o.cert, key: o.key }),
      ...(o.maxVersion === undefined ? {} : { maxVersion: o.maxVersion }),
      agent: false,
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const body = Buffer.concat(chunks);
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body, text: () => body.toString('utf8'), json: <T>() => JSON.parse(body.toString('utf8')) as T });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    if (o.body !== undefined) req.write(o.body);
    req.end();
  });
}
