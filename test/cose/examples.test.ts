import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { getProvider, OneShotSealer, PROVIDER_NAMES, providerForAead } from '../../src/crypto/index.ts';
import {
  aadProtected, assembleEncrypt, contentAlgById, ecdhEsContentKey, ecdhEsRecipients, encStructure, Header, kdfContext, openCose, parseCoseEncrypt,
  sealEncrypt0, serializeEncrypt, x25519Recipient, type HeaderMap,
} from '../../src/cose/index.ts';
import { fromHex, toHex } from '../../src/util/bytes.ts';
import { CryptoError, DecodeError, Unsupported } from '../../src/util/errors.ts';
import { loadVectors } from '../support/vectors.ts';

interface CoseVector {
  id: string; structure: 'COSE_Encrypt0' | 'COSE_Encrypt'; expect: 'pass' | 'fail'; content_alg: number;
  recipient_alg?: number; key_material?: Record<string, string>; cek: string; iv: string; plaintext: string;
  external_aad: string; output_cbor: string; enc_structure_aad: string; enc_structure_aad_derived?: string;
  ephemeral_private_key?: string; kdf_context?: string; ecdh_shared_secret?: string; recipient_protected_bstr?: string;
}

const file = loadVectors<CoseVector>('cose-examples.json');
const passing = file.vectors.filter((v) => v.expect === 'pass');
const failing = file.vectors.filter((v) => v.expect === 'fail');

/** The X25519 private key `d` of the example's recipient, raw. */
function recipientD(v: CoseVector): Uint8Array {
  const d = v.key_material?.['d_hex'] ?? v.key_material?.['d'];
  if (d === undefined) throw new Error(`${v.id}: no recipient private key`);
  return /^[0-9a-f]+$/.test(d) ? fromHex(d) : new Uint8Array(Buffer.from(d, 'base64url'));
}

describe('COSE examples (cose-wg/Examples)', () => {
  it('the file has the cases we expect', () => {
    assert.equal(passing.length, 10);
    assert.equal(failing.length, 6);
  });

  for (const v of passing) {
    const usesSs = v.recipient_alg === -27;
    it(`${v.id}: opens${usesSs ? ' (ECDH-SS is not supported: refused with Unsupported)' : ' and our encoder reproduces the bytes'}`, (t) => {
      const bytes = fromHex(v.output_cbor);
      const alg = contentAlgById(v.content_alg);
      assert.ok(alg, `${v.id}: content alg ${v.content_alg}`);
      const cek = fromHex(v.cek);
      const extAad = fromHex(v.external_aad);
      if (usesSs) {
        assert.throws(() => openCose(bytes, { recipient: x25519Recipient(getProvider(), recipientD(v)) }), Unsupported);
        return;
      }
      // enc-pass-03 drops the tag (its context says COSE_Encrypt0); enc-pass-01 puts alg in the
      // unprotected bucket. Both are valid RFC 9052; vitalseal accepts them only when told to.
      const untagged = bytes[0] === 0x83 ? 'encrypt0' as const : undefined;
      const lenient = { externalAad: extAad, allowUnprotectedAlg: true, ...(untagged === undefined ? {} : { untagged }) };
      const parsed = parseCoseEncrypt(bytes, undefined, untagged);
      // The AAD we build from the message is the example's (or its documented correction).
      const context = parsed.kind === 'encrypt0' ? 'Encrypt0' : 'Encrypt';
      assert.equal(toHex(encStructure(context, aadProtected(parsed), extAad)), v.enc_structure_aad_derived ?? v.enc_structure_aad, v.id);
      for (const name of PROVIDER_NAMES) {
        const provider = getProvider(name);
        if (!provider.supportsAead(alg.aead)) continue;
        const keys = v.recipient_alg === -25
          ? { recipient: x25519Recipient(provider, recipientD(v)), provider }
          : { direct: () => cek, provider };
        const opened = openCose(bytes, keys, lenient);
        assert.equal(toHex(opened.plaintext), v.plaintext, `${v.id} (${name})`);
      }
      if (!parsed.protected.has(Header.ALG)) {
        // Default policy: an unprotected content alg is refused.
        assert.throws(() => openCose(bytes, { direct: () => cek }, { ...lenient, allowUnprotectedAlg: false }), (e) => e instanceof DecodeError && e.code === 'cose-alg');
        t.diagnostic(`${v.id}: not re-encoded: vitalseal always writes alg in the protected header`);
        return;
      }
      // Reproduce the bytes with the example's key, IV (and ephemeral key).
      const iv = fromHex(v.iv);
      const unprotectedExtras: HeaderMap = new Map([...parsed.unprotected].filter(([k]) => k !== Header.IV));
      const protectedExtras: HeaderMap = new Map([...parsed.protected].filter(([k]) => k !== Header.ALG));
      const provider = providerForAead(alg.aead);
      let ours: Uint8Array;
      if (parsed.kind === 'encrypt0') {
        ours = sealEncrypt0(new OneShotSealer(provider, alg.aead, cek), alg.name, iv, fromHex(v.plaintext), { externalAad: extAad, unprotected: unprotectedExtras, protectedExtras });
      } else if (v.recipient_alg === -25) {
        const eph = fromHex(v.ephemeral_private_key as string);
        const recipientPublic = x25519Recipient(provider, recipientD(v)).publicKey;
        const secret = provider.x25519(eph, recipientPublic);
        assert.equal(toHex(secret), v.ecdh_shared_secret);
        assert.equal(toHex(kdfContext(alg.id, alg.keyLength, fromHex(v.recipient_protected_bstr as string))), v.kdf_context);
        const derived = ecdhEsContentKey(provider, alg, secret, fromHex(v.recipient_protected_bstr as string));
        assert.equal(toHex(derived), v.cek);
        const kid = parsed.recipients[0]?.unprotected.get(Header.KID) as Uint8Array;
        ours = assembleEncrypt(alg, (aad) => ({ iv, ciphertext: provider.aeadSeal(alg.aead, derived, iv, fromHex(v.plaintext), aad) }),
          ecdhEsRecipients(provider.x25519PublicKey(eph), kid), {});
      } else {
        const aad = encStructure('Encrypt', parsed.protectedBytes, extAad);
        const r = parsed.recipients[0];
        assert.ok(r);
        ours = serializeEncrypt(
          { protectedBytes: parsed.protectedBytes, unprotected: parsed.unprotected, ciphertext: provider.aeadSeal(alg.aead, cek, iv, fromHex(v.plaintext), aad) },
          [{ protectedBytes: r.protectedBytes, unprotected: r.unprotected, ciphertext: r.ciphertext }],
        );
      }
      assert.equal(toHex(untagged === undefined ? ours : ours.subarray(1)), v.output_cbor, `${v.id}: encoder output`);
    });
  }

  for (const v of failing) {
    it(`${v.id}: refused with a typed error`, () => {
      const cek = fromHex(v.cek);
      assert.throws(
        () => openCose(fromHex(v.output_cbor), { direct: () => cek }),
        (e) => e instanceof DecodeError || e instanceof CryptoError || e instanceof Unsupported,
      );
    });
  }
});
