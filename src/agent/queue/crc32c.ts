/**
 * CRC-32C (Castagnoli, reflected polynomial 0x82F63B78; RFC 3720 §12.1 / B.4). Frames records in
 * the durable queue so a torn or corrupted tail is recognised on recovery. Not a security check:
 * the records it frames are already COSE-sealed and authenticated.
 */
const TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32C of `data`, continuing from `crc` (pass the previous result to checksum in pieces). */
export function crc32c(data: Uint8Array, crc = 0): number {
  let c = ~crc >>> 0;
  for (let i = 0; i < data.length; i++) c = (TABLE[(c ^ (data[i] as number)) & 0xff] as number) ^ (c >>> 8);
  return ~c >>> 0;
}
