/**
 * The encrypted backup archive: every device, wrapped data key, API token (hashed) and stored
 * message of an ingest database, encrypted under a fresh archive key wrapped by the KEK, with a
 * manifest signed by a key-store key. Messages stay encrypted under their data keys inside it, so
 * the archive adds a second layer, not the first.
 *
 * Layout (integers big-endian):
 *
 *   offset 0    "VSBACKUP"                       magic (8)
 *          8    format version = 1                u32
 *          12   header length                     u32
 *          16   header                            CBOR map (archive id, time, source, KEK name, wrapped archive key, signer name)
 *          …    chunk 0, chunk 1, …               AES-256-GCM(archive key) of a CBOR array of records
 *          …    manifest                          CBOR map (header hash and length, every chunk's offset, length,
 *                                                 SHA-256 and records, counts, RFC 6962 Merkle root over the records)
 *          …    signature                         ECDSA P-256 (DER) over "vitalseal backup manifest v1\0" || manifest
 *   size − 64   trailer                           "VSBKEND\0", manifest offset u64, manifest length u32,
 *                                                 signature length u32, SHA-256(manifest), first 8 bytes of
 *                                                 SHA-256 of the 56 trailer bytes before them
 *
 * Every byte belongs to a region that some check covers, so a flipped byte anywhere is detected and
 * the region named: the magic and version by value, the trailer by its own check, the manifest by
 * the trailer's hash, the signature by verification against the key store's key (not a key the
 * archive names), the header length by the manifest, the header and each chunk by their SHA-256 in
 * the manifest. Then every chunk must decrypt (GCM) and its records must rebuild the signed Merkle
 * root and counts.
 *
 * Chunk nonces are 32 zero bits || the chunk index (64 bits): the archive key is fresh per archive,
 * so nonces never repeat under it. Each chunk's AAD is SHA-256(header) || index, so a chunk cannot
 * move to another position or archive.
 */
import { createHash, createPublicKey, randomBytes, verify as nodeVerify } from 'node:crypto';
import { closeSync, fstatSync, openSync, readSync, type Stats } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import { decodeCbor, encodeCbor, headerBytes as cborHead } from '../../codec/cbor.ts';
import type { CryptoProvider } from '../../crypto/provider.ts';
import { getProvider } from '../../crypto/registry.ts';
import type { WrappedKeyRecord } from '../../keystore/hierarchy/types.ts';
import type { Signer } from '../../keystore/signer.ts';
import type { KeyStore } from '../../keystore/types.ts';
import { concatBytes, equalBytes, toHex, utf8, zeroize } from '../../util/bytes.ts';
import type { Clock } from '../../util/clock.ts';
import { isDeviceId } from '../../util/device-id.ts';
import { ApiMisuse, DecodeError, KeyStoreError, StorageError } from '../../util/errors.ts';
import { dataKeyId } from '../data-keys.ts';
import type { ApiTokenRecord, DeviceRecord, IngestStorage, StoredMessage } from '../storage/types.ts';
import { MerkleTree } from './merkle.ts';

export const MAGIC = utf8('VSBACKUP');
export const TRAILER_MAGIC = utf8('VSBKEND\0');
export const FORMAT_VERSION = 1;
export const TRAILER_BYTES = 64;
const PREFIX_BYTES = 16;
const SIGNATURE_LABEL = utf8('vitalseal backup manifest v1\0');
const HEADER_FORMAT = 'vitalseal-ingest-backup';
const CHUNK_RECORDS = 256;
const CHUNK_PLAIN_BYTES = 1024 * 1024;
const MAX_HEADER_BYTES = 16 * 1024;
const MAX_MANIFEST_BYTES = 64 * 1024 * 1024;
const MAX_SIGNATURE_BYTES = 512;
const MAX_CHUNK_BYTES = 64 * 1024 * 1024;

/** A flipped, missing or added byte: `region` names where. */
export class ArchiveDamaged extends DecodeError {
  constructor(readonly region: string, message: string) {
    super('backup-damaged', `backup archive damaged in ${region}: ${message}`);
  }
}

export type BackupRecord =
  | { readonly type: 'device'; readonly device: DeviceRecord }
  | { readonly type: 'key'; readonly key: WrappedKeyRecord }
  | { readonly type: 'token'; readonly token: ApiTokenRecord }
  | { readonly type: 'message'; readonly message: StoredMessage };

export interface BackupCounts {
  devices: number;
  keys: number;
  tokens: number;
  messages: number;
}

export interface ArchiveHeader {
  readonly archiveId: Uint8Array;
  readonly createdAt: number;
  readonly source: string;
  readonly kekName: string;
  readonly wrappedKey: Uint8Array;
  readonly signerName: string;
}

export interface ChunkInfo {
  readonly offset: number;
  readonly length: number;
  readonly sha256: Uint8Array;
  /** Index of the chunk's first record, and how many it holds. */
  readonly firstRecord: number;
  readonly records: number;
}

export interface ArchiveManifest {
  readonly archiveId: Uint8Array;
  readonly headerSha256: Uint8Array;
  readonly headerLength: number;
  readonly chunks: readonly ChunkInfo[];
  readonly counts: Readonly<BackupCounts>;
  readonly merkleRoot: Uint8Array;
  readonly records: number;
  readonly createdAt: number;
  readonly signerSpki: Uint8Array;
}

function sha256(...parts: Uint8Array[]): Uint8Array {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return new Uint8Array(h.digest());
}

function u32(n: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n, false);
  return b;
}

function chunkNonce(index: number): Uint8Array {
  const n = new Uint8Array(12);
  new DataView(n.buffer).setBigUint64(4, BigInt(index), false);
  return n;
}

function chunkAad(headerSha: Uint8Array, index: number): Uint8Array {
  const b = new Uint8Array(40);
  b.set(headerSha, 0);
  new DataView(b.buffer).setBigUint64(32, BigInt(index), false);
  return b;
}

// ---- records ------------------------------------------------------------------------------------

const nul = <T>(v: T | undefined): T | null => (v === undefined ? null : v);

export function encodeRecord(r: BackupRecord): Uint8Array {
  switch (r.type) {
    case 'device': {
      const d = r.device;
      return encodeCbor([1, d.deviceId, d.credential, d.credentialSha256, d.status, d.enrolledAt, nul(d.statusChangedAt), nul(d.certSerial), nul(d.certNotAfter),
        nul(d.lastSeenAt), nul(d.transport), nul(d.suite), nul(d.sealingEpoch), nul(d.epochStartedAt), d.rejections, nul(d.lastRejectionAt), nul(d.lastRejectionReason)]);
    }
    case 'key':
      return encodeCbor([2, r.key.keyId, r.key.version, r.key.kekName, r.key.wrapped, r.key.createdAt]);
    case 'token':
      return encodeCbor([3, r.token.tokenSha256, r.token.name, r.token.role, r.token.createdAt, nul(r.token.expiresAt), nul(r.token.revokedAt)]);
    case 'message': {
      const m = r.message;
      return encodeCbor([4, m.deviceId, m.seq, m.receivedAt, m.firstTime, m.lastTime, m.keyVersion, m.nonce, m.ciphertext]);
    }
    default: {
      const never: never = r;
      throw new TypeError(`unknown record ${String(never)}`);
    }
  }
}

function bad(what: string): never {
  throw new DecodeError('backup-record', `backup record: ${what}`);
}

const int = (v: unknown, what: string): number => (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : bad(`${what} is not an integer`));
const str = (v: unknown, what: string, max = 256): string => (typeof v === 'string' && v.length <= max ? v : bad(`${what} is not text`));
const bytes = (v: unknown, what: string): Uint8Array => (v instanceof Uint8Array ? v : bad(`${what} is not bytes`));
const optInt = (v: unknown, what: string): number | undefined => (v === null ? undefined : int(v, what));
const optStr = (v: unknown, what: string): string | undefined => (v === null ? undefined : str(v, what));

function opt<K extends string, V>(k: K, v: V | undefined): { [P in K]?: V } {
  return (v === undefined ? {} : { [k]: v }) as { [P in K]?: V };
}

/** Decodes one record (its CBOR already parsed), checking every field's type. */
export function decodeRecord(v: unknown): BackupRecord {
  if (!Array.isArray(v) || v.length < 1) bad('not an array');
  const a = v as unknown[];
  const kind = a[0];
  const arity: Record<number, number> = { 1: 17, 2: 6, 3: 7, 4: 9 };
  if (typeof kind !== 'number' || arity[kind] !== a.length) bad(`type ${String(kind)} with ${a.length} fields`);
  switch (kind) {
    case 1: {
      const deviceId = str(a[1], 'device id');
      if (!isDeviceId(deviceId)) bad('invalid device id');
      const credential = a[2];
      const status = a[4];
      if (credential !== 'certificate' && credential !== 'psk') bad('credential');
      if (status !== 'active' && status !== 'suspended' && status !== 'revoked') bad('status');
      return {
        type: 'device',
        device: {
          deviceId, credential, credentialSha256: str(a[3], 'credential hash'), status, enrolledAt: int(a[5], 'enrolledAt'),
          ...opt('statusChangedAt', optInt(a[6], 'statusChangedAt')), ...opt('certSerial', optStr(a[7], 'certSerial')),
          ...opt('certNotAfter', optInt(a[8], 'certNotAfter')), ...opt('lastSeenAt', optInt(a[9], 'lastSeenAt')),
          ...opt('transport', optStr(a[10], 'transport')), ...opt('suite', optStr(a[11], 'suite')),
          ...opt('sealingEpoch', optStr(a[12], 'sealingEpoch')), ...opt('epochStartedAt', optInt(a[13], 'epochStartedAt')),
          rejections: int(a[14], 'rejections'), ...opt('lastRejectionAt', optInt(a[15], 'lastRejectionAt')),
          ...opt('lastRejectionReason', optStr(a[16], 'lastRejectionReason')),
        },
      };
    }
    case 2:
      return { type: 'key', key: { keyId: str(a[1], 'key id'), version: int(a[2], 'version'), kekName: str(a[3], 'kek'), wrapped: bytes(a[4], 'wrapped'), createdAt: int(a[5], 'createdAt') } };
    case 3: {
      const role = a[3];
      if (role !== 'reader' && role !== 'admin') bad('role');
      return {
        type: 'token',
        token: { tokenSha256: str(a[1], 'token hash'), name: str(a[2], 'name'), role, createdAt: int(a[4], 'createdAt'), ...opt('expiresAt', optInt(a[5], 'expiresAt')), ...opt('revokedAt', optInt(a[6], 'revokedAt')) },
      };
    }
    default: {
      const deviceId = str(a[1], 'device id');
      if (!isDeviceId(deviceId)) bad('invalid device id');
      return {
        type: 'message',
        message: {
          deviceId, seq: int(a[2], 'seq'), receivedAt: int(a[3], 'receivedAt'), firstTime: int(a[4], 'firstTime'), lastTime: int(a[5], 'lastTime'),
          keyVersion: int(a[6], 'keyVersion'), nonce: bytes(a[7], 'nonce'), ciphertext: bytes(a[8], 'ciphertext'),
        },
      };
    }
  }
}

function encodeHeader(h: ArchiveHeader): Uint8Array {
  return encodeCbor(new Map<number, unknown>([[1, HEADER_FORMAT], [2, h.archiveId], [3, h.createdAt], [4, h.source], [5, h.kekName], [6, h.wrappedKey], [7, h.signerName]]));
}

function decodeHeader(b: Uint8Array): ArchiveHeader {
  const m = decodeCbor(b, { maxBytes: MAX_HEADER_BYTES, maxDepth: 2 });
  if (!(m instanceof Map) || m.size !== 7 || m.get(1) !== HEADER_FORMAT) throw new ArchiveDamaged('header', 'not a vitalseal backup header');
  const archiveId = m.get(2);
  if (!(archiveId instanceof Uint8Array) || archiveId.length !== 16) throw new ArchiveDamaged('header', 'archive id');
  return { archiveId, createdAt: int(m.get(3), 'createdAt'), source: str(m.get(4), 'source'), kekName: str(m.get(5), 'kek'), wrappedKey: bytes(m.get(6), 'wrapped key'), signerName: str(m.get(7), 'signer') };
}

function encodeManifest(m: ArchiveManifest): Uint8Array {
  return encodeCbor(new Map<number, unknown>([
    [1, m.archiveId], [2, m.headerSha256], [3, m.headerLength],
    [4, m.chunks.map((c) => [c.offset, c.length, c.sha256, c.firstRecord, c.records])],
    [5, [m.counts.devices, m.counts.keys, m.counts.tokens, m.counts.messages]],
    [6, m.merkleRoot], [7, m.records], [8, m.createdAt], [9, m.signerSpki],
  ]));
}

function decodeManifest(b: Uint8Array): ArchiveManifest {
  try {
    const m = decodeCbor(b, { maxBytes: MAX_MANIFEST_BYTES, maxDepth: 4, maxItems: 8_000_000, maxStringBytes: 4096 });
    if (!(m instanceof Map) || m.size !== 9) bad('manifest fields');
    const chunks = m.get(4);
    if (!Array.isArray(chunks)) bad('chunks');
    const counts = m.get(5);
    if (!Array.isArray(counts) || counts.length !== 4) bad('counts');
    const id = bytes(m.get(1), 'archive id');
    const root = bytes(m.get(6), 'merkle root');
    const hs = bytes(m.get(2), 'header hash');
    if (id.length !== 16 || root.length !== 32 || hs.length !== 32) bad('hash lengths');
    return {
      archiveId: id, headerSha256: hs, headerLength: int(m.get(3), 'header length'),
      chunks: chunks.map((c: unknown) => {
        if (!Array.isArray(c) || c.length !== 5) bad('chunk entry');
        const sha = bytes(c[2], 'chunk hash');
        if (sha.length !== 32) bad('chunk hash length');
        return { offset: int(c[0], 'offset'), length: int(c[1], 'length'), sha256: sha, firstRecord: int(c[3], 'first record'), records: int(c[4], 'records') };
      }),
      counts: { devices: int(counts[0], 'devices'), keys: int(counts[1], 'keys'), tokens: int(counts[2], 'tokens'), messages: int(counts[3], 'messages') },
      merkleRoot: root, records: int(m.get(7), 'records'), createdAt: int(m.get(8), 'createdAt'), signerSpki: bytes(m.get(9), 'signer'),
    };
  } catch (e) {
    if (e instanceof ArchiveDamaged) throw e;
    throw new ArchiveDamaged('manifest', e instanceof Error ? e.message : 'unreadable');
  }
}

// ---- writing ------------------------------------------------------------------------------------

export interface WriteBackupOptions {
  readonly storage: IngestStorage;
  readonly keyStore: KeyStore;
  /** The KEK that wraps the archive key (the ingest KEK, so the same key store restores it). */
  readonly kekName: string;
  /** The signing key (in the key store) for the manifest; made on first use. */
  readonly signerName: string;
  readonly clock: Clock;
  /** Where to write; refused if it exists. Written to a temporary file and renamed when complete. */
  readonly out: string;
  readonly provider?: CryptoProvider;
}

export interface BackupReport {
  readonly path: string;
  readonly archiveId: string;
  readonly bytes: number;
  readonly chunks: number;
  readonly counts: Readonly<BackupCounts>;
  readonly merkleRoot: string;
  readonly createdAt: number;
}

async function signerFor(store: KeyStore, name: string): Promise<Signer> {
  try {
    return await store.openSigningKey(name);
  } catch (e) {
    if (e instanceof KeyStoreError && e.code === 'not-found') return store.createSigningKey(name);
    throw e;
  }
}

/** Writes a backup of everything in `storage` to `out` (see the module comment for the format). */
export async function writeBackup(o: WriteBackupOptions): Promise<BackupReport> {
  const provider = o.provider ?? getProvider();
  const signer = await signerFor(o.keyStore, o.signerName);
  if (signer.scheme !== 'ecdsa-p256-sha256' && signer.scheme !== 'ed25519') throw new ApiMisuse('backup-signer', `unsupported signer ${String(signer.scheme)}`);
  const archiveKey = new Uint8Array(randomBytes(32));
  const tmp = `${o.out}.partial-${process.pid}`;
  const target = await open(o.out, 'wx', 0o600).catch((e: NodeJS.ErrnoException) => {
    throw new ApiMisuse(e.code === 'EEXIST' ? 'exists' : 'backup-io', e.code === 'EEXIST' ? `${o.out} exists; refusing to overwrite a backup` : `cannot create ${o.out}: ${e.code ?? 'error'}`);
  });
  await target.close();
  const fh = await open(tmp, 'wx', 0o600);
  let offset = 0;
  const write = async (b: Uint8Array) => {
    await fh.write(b, 0, b.length, offset);
    offset += b.length;
  };
  try {
    const header: ArchiveHeader = {
      archiveId: new Uint8Array(randomBytes(16)), createdAt: o.clock.now(), source: o.storage.kind, kekName: o.kekName,
      wrappedKey: await o.keyStore.wrapKey(o.kekName, archiveKey), signerName: o.signerName,
    };
    const headerBytes = encodeHeader(header);
    const headerSha = sha256(headerBytes);
    await write(concatBytes(MAGIC, u32(FORMAT_VERSION), u32(headerBytes.length), headerBytes));

    const merkle = new MerkleTree();
    const counts: BackupCounts = { devices: 0, keys: 0, tokens: 0, messages: 0 };
    const chunks: ChunkInfo[] = [];
    let pending: Uint8Array[] = [];
    let pendingBytes = 0;
    let firstRecord = 0;
    const flush = async () => {
      if (pending.length === 0) return;
      // A CBOR array (major type 4) of the records, each already encoded.
      const plain = concatBytes(cborHead(4, pending.length), ...pending);
      const index = chunks.length;
      const ct = provider.aeadSeal('aes-256-gcm', archiveKey, chunkNonce(index), plain, chunkAad(headerSha, index));
      chunks.push({ offset, length: ct.length, sha256: sha256(ct), firstRecord, records: pending.length });
      await write(ct);
      firstRecord += pending.length;
      pending = [];
      pendingBytes = 0;
    };
    const add = async (r: BackupRecord) => {
      const enc = encodeRecord(r);
      merkle.add(enc);
      counts[r.type === 'device' ? 'devices' : r.type === 'key' ? 'keys' : r.type === 'token' ? 'tokens' : 'messages']++;
      pending.push(enc);
      pendingBytes += enc.length;
      if (pending.length >= CHUNK_RECORDS || pendingBytes >= CHUNK_PLAIN_BYTES) await flush();
    };

    // Key records are read before and after the messages: a version made while the backup runs is
    // in the second read, a version destroyed meanwhile in the first, so every message's key is in.
    const records = o.storage.keyRecords();
    const seenKeys = new Set<string>();
    const addKeys = async (list: readonly WrappedKeyRecord[]) => {
      for (const k of list) {
        const id = `${k.keyId}\u0000${k.version}`;
        if (seenKeys.has(id)) continue;
        seenKeys.add(id);
        await add({ type: 'key', key: k });
      }
    };
    await addKeys(await records.list());
    for (const d of await o.storage.listDevices()) await add({ type: 'device', device: d });
    for (const t of await o.storage.listApiTokens()) await add({ type: 'token', token: t });
    const used = new Set<string>();
    let cursor: { deviceId: string; seq: number } | undefined;
    for (;;) {
      const page = await o.storage.listMessages(cursor, 500);
      if (page.length === 0) break;
      for (const m of page) {
        used.add(`${dataKeyId(m.deviceId)}\u0000${m.keyVersion}`);
        await add({ type: 'message', message: m });
      }
      const last = page[page.length - 1] as StoredMessage;
      cursor = { deviceId: last.deviceId, seq: last.seq };
    }
    await addKeys(await records.list());
    await flush();
    const missing = [...used].filter((u) => !seenKeys.has(u));
    if (missing.length > 0) throw new StorageError('backup-incomplete', `${missing.length} data key version(s) used by messages vanished while backing up (a re-key finished meanwhile); run the backup again`);

    const manifest: ArchiveManifest = {
      archiveId: header.archiveId, headerSha256: headerSha, headerLength: headerBytes.length, chunks, counts,
      merkleRoot: merkle.root(), records: merkle.count, createdAt: header.createdAt, signerSpki: await signer.publicKeySpki(),
    };
    const manifestBytes = encodeManifest(manifest);
    const signature = await signer.sign(concatBytes(SIGNATURE_LABEL, manifestBytes));
    const manifestOffset = offset;
    await write(manifestBytes);
    await write(signature);
    await write(trailer(manifestOffset, manifestBytes, signature.length));
    await fh.datasync();
    await fh.close();
    await rename(tmp, o.out);
    return { path: o.out, archiveId: toHex(header.archiveId), bytes: offset, chunks: chunks.length, counts, merkleRoot: toHex(manifest.merkleRoot), createdAt: header.createdAt };
  } catch (e) {
    await fh.close().catch(() => undefined);
    await rm(tmp, { force: true });
    await rm(o.out, { force: true });
    throw e;
  } finally {
    zeroize(archiveKey);
  }
}

function trailer(manifestOffset: number, manifest: Uint8Array, sigLength: number): Uint8Array {
  const t = new Uint8Array(TRAILER_BYTES);
  const v = new DataView(t.buffer);
  t.set(TRAILER_MAGIC, 0);
  v.setBigUint64(8, BigInt(manifestOffset), false);
  v.setUint32(16, manifest.length, false);
  v.setUint32(20, sigLength, false);
  t.set(sha256(manifest), 24);
  t.set(sha256(t.subarray(0, 56)).subarray(0, 8), 56);
  return t;
}

// ---- reading and verifying ----------------------------------------------------------------------

export interface VerifyOptions {
  readonly keyStore: KeyStore;
  /**
   * The public key (PEM) the manifest must be signed with. Default: the key store's key named in the
   * header, which must exist there: an archive is never trusted on its own word.
   */
  readonly trustedSignerPem?: string;
  readonly provider?: CryptoProvider;
}

/** A byte range of the archive and what it is: for naming damage, and for tests. */
export interface ArchiveRegion {
  readonly name: string;
  readonly start: number;
  readonly end: number;
}

export interface VerifiedArchive {
  readonly path: string;
  readonly size: number;
  readonly header: ArchiveHeader;
  readonly manifest: ArchiveManifest;
  readonly regions: readonly ArchiveRegion[];
  /** Decrypts the chunks again (re-checking their hashes) and yields every record in order; closes the file at the end. */
  records(): AsyncGenerator<BackupRecord>;
  /** Releases the file and forgets the archive key (when `records` is not run to the end). */
  close(): void;
}

function readAt(fd: number, position: number, length: number): Uint8Array {
  const b = Buffer.alloc(length);
  let got = 0;
  while (got < length) {
    const n = readSync(fd, b, got, length - got, position + got);
    if (n === 0) break;
    got += n;
  }
  return new Uint8Array(b.buffer, b.byteOffset, got);
}

function chunkName(c: ChunkInfo, i: number): string {
  return `chunk ${i} (records ${c.firstRecord}-${c.firstRecord + c.records - 1})`;
}

/**
 * Checks an archive completely (structure, signature, every hash, decryption of every chunk, the
 * Merkle root and counts) without writing anything. Damage throws `ArchiveDamaged` naming the region.
 */
export async function verifyBackup(path: string, o: VerifyOptions): Promise<VerifiedArchive> {
  const provider = o.provider ?? getProvider();
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    throw new ApiMisuse('backup-io', `cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  let st: Stats;
  try {
    st = fstatSync(fd);
    const size = st.size;
    if (size < PREFIX_BYTES + TRAILER_BYTES) throw new ArchiveDamaged('archive', `only ${size} bytes: truncated`);
    const prefix = readAt(fd, 0, PREFIX_BYTES);
    if (!equalBytes(prefix.subarray(0, 8), MAGIC)) throw new ArchiveDamaged('magic', 'not a vitalseal backup (bytes 0-7)');
    const pv = new DataView(prefix.buffer, prefix.byteOffset, PREFIX_BYTES);
    if (pv.getUint32(8, false) !== FORMAT_VERSION) throw new ArchiveDamaged('format version', `version ${pv.getUint32(8, false)} (bytes 8-11)`);
    const headerLen = pv.getUint32(12, false);

    const tStart = size - TRAILER_BYTES;
    const t = readAt(fd, tStart, TRAILER_BYTES);
    if (!equalBytes(t.subarray(0, 8), TRAILER_MAGIC) || !equalBytes(t.subarray(56, 64), sha256(t.subarray(0, 56)).subarray(0, 8))) {
      throw new ArchiveDamaged('trailer', `the last ${TRAILER_BYTES} bytes fail their check (truncated, or damaged)`);
    }
    const tv = new DataView(t.buffer, t.byteOffset, TRAILER_BYTES);
    const manifestOffset = Number(tv.getBigUint64(8, false));
    const manifestLen = tv.getUint32(16, false);
    const sigLen = tv.getUint32(20, false);
    if (manifestLen > MAX_MANIFEST_BYTES || sigLen > MAX_SIGNATURE_BYTES || manifestOffset + manifestLen + sigLen !== tStart) {
      throw new ArchiveDamaged('trailer', 'manifest and signature positions do not fit the file');
    }
    const manifestBytes = readAt(fd, manifestOffset, manifestLen);
    if (!equalBytes(sha256(manifestBytes), t.subarray(24, 56))) throw new ArchiveDamaged('manifest', `bytes ${manifestOffset}-${manifestOffset + manifestLen - 1} do not match the trailer's hash`);
    const manifest = decodeManifest(manifestBytes);

    const sigStart = manifestOffset + manifestLen;
    const signature = readAt(fd, sigStart, sigLen);
    const headerEnd = PREFIX_BYTES + headerLen;
    if (headerLen !== manifest.headerLength || headerEnd > manifestOffset) throw new ArchiveDamaged('header length field', `bytes 12-15 say ${headerLen}, the manifest ${manifest.headerLength}`);
    const headerBytes = readAt(fd, PREFIX_BYTES, headerLen);
    if (!equalBytes(sha256(headerBytes), manifest.headerSha256)) throw new ArchiveDamaged('header', `bytes ${PREFIX_BYTES}-${headerEnd - 1} do not match the manifest's hash`);
    const header = decodeHeader(headerBytes);

    // The signature, against the key the key store holds (or the one given), never the archive's own.
    let trustedPem = o.trustedSignerPem;
    if (trustedPem === undefined) {
      try {
        trustedPem = await o.keyStore.publicKeyPem(header.signerName);
      } catch (e) {
        if (e instanceof KeyStoreError && e.code === 'not-found') throw new KeyStoreError('not-found', `the key store has no signing key '${header.signerName}' to check this backup against; give the signer's public key`);
        throw e;
      }
    }
    const trusted = createPublicKey(trustedPem);
    const trustedSpki = new Uint8Array(trusted.export({ format: 'der', type: 'spki' }));
    const sigOk = (() => {
      try {
        return nodeVerify(trusted.asymmetricKeyType === 'ed25519' ? null : 'sha256', concatBytes(SIGNATURE_LABEL, manifestBytes), { key: trusted, dsaEncoding: 'der' }, signature);
      } catch {
        return false;
      }
    })();
    if (!sigOk) throw new ArchiveDamaged('signature', `bytes ${sigStart}-${sigStart + sigLen - 1} are not a valid signature of the manifest by the trusted key`);
    if (!equalBytes(manifest.signerSpki, trustedSpki)) throw new ArchiveDamaged('manifest', 'names another signer than the one that signed it');
    if (!equalBytes(manifest.archiveId, header.archiveId)) throw new ArchiveDamaged('header', 'belongs to another archive');

    const regions: ArchiveRegion[] = [
      { name: 'magic', start: 0, end: 8 }, { name: 'format version', start: 8, end: 12 }, { name: 'header length field', start: 12, end: 16 },
      { name: 'header', start: PREFIX_BYTES, end: headerEnd },
    ];
    let expected = headerEnd;
    manifest.chunks.forEach((c, i) => {
      if (c.offset !== expected || c.length > MAX_CHUNK_BYTES || c.length < 16) throw new ArchiveDamaged('manifest', `chunk ${i} is not where the layout puts it`);
      regions.push({ name: chunkName(c, i), start: c.offset, end: c.offset + c.length });
      expected = c.offset + c.length;
    });
    if (expected !== manifestOffset) throw new ArchiveDamaged('manifest', 'the chunks do not end where the manifest starts');
    regions.push({ name: 'manifest', start: manifestOffset, end: sigStart }, { name: 'signature', start: sigStart, end: tStart }, { name: 'trailer', start: tStart, end: size });

    let archiveKey: Uint8Array;
    try {
      archiveKey = await o.keyStore.unwrapKey(header.kekName, header.wrappedKey);
    } catch (e) {
      if (e instanceof KeyStoreError) throw new KeyStoreError(e.code, `this key store cannot unwrap the archive key (KEK '${header.kekName}'): ${e.message}`);
      throw e;
    }
    const headerSha = sha256(headerBytes);
    const readChunk = (c: ChunkInfo, i: number): BackupRecord[] => {
      const ct = readAt(fd, c.offset, c.length);
      if (ct.length !== c.length || !equalBytes(sha256(ct), c.sha256)) throw new ArchiveDamaged(chunkName(c, i), `bytes ${c.offset}-${c.offset + c.length - 1} do not match the manifest's hash`);
      let plain: Uint8Array;
      try {
        plain = provider.aeadOpen('aes-256-gcm', archiveKey, chunkNonce(i), ct, chunkAad(headerSha, i));
      } catch {
        throw new ArchiveDamaged(chunkName(c, i), 'does not decrypt with the archive key');
      }
      try {
        const list = decodeCbor(plain, { maxBytes: plain.length, maxStringBytes: plain.length, maxItems: c.records * 20 + 1, maxDepth: 3 });
        if (!Array.isArray(list) || list.length !== c.records) throw new ArchiveDamaged(chunkName(c, i), 'record count differs from the manifest');
        return list.map(decodeRecord);
      } catch (e) {
        if (e instanceof ArchiveDamaged) throw e;
        throw new ArchiveDamaged(chunkName(c, i), e instanceof Error ? e.message : 'unreadable records');
      } finally {
        zeroize(plain);
      }
    };

    try {
      const merkle = new MerkleTree();
      const counts: BackupCounts = { devices: 0, keys: 0, tokens: 0, messages: 0 };
      manifest.chunks.forEach((c, i) => {
        for (const r of readChunk(c, i)) {
          merkle.add(encodeRecord(r));
          counts[r.type === 'device' ? 'devices' : r.type === 'key' ? 'keys' : r.type === 'token' ? 'tokens' : 'messages']++;
        }
      });
      if (merkle.count !== manifest.records || !equalBytes(merkle.root(), manifest.merkleRoot)) throw new ArchiveDamaged('records', 'the records do not rebuild the signed Merkle root');
      for (const k of ['devices', 'keys', 'tokens', 'messages'] as const) {
        if (counts[k] !== manifest.counts[k]) throw new ArchiveDamaged('records', `${counts[k]} ${k}, the manifest says ${manifest.counts[k]}`);
      }
    } catch (e) {
      zeroize(archiveKey);
      throw e;
    }

    let closed = false;
    const close = () => {
      if (closed) return;
      closed = true;
      zeroize(archiveKey);
      closeSync(fd);
    };
    return {
      path, size, header, manifest, regions, close,
      async *records() {
        try {
          for (const [i, c] of manifest.chunks.entries()) yield* readChunk(c, i);
        } finally {
          close();
        }
      },
    };
  } catch (e) {
    try {
      closeSync(fd);
    } catch {
      // already closed
    }
    throw e;
  }
}

/** Which region of a verified archive holds byte `offset` (for tests and the drill report). */
export function regionAt(regions: readonly ArchiveRegion[], offset: number): string | undefined {
  return regions.find((r) => offset >= r.start && offset < r.end)?.name;
}

