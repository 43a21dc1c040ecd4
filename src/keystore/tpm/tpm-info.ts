/**
 * What the store needs from Fapi_GetInfo's JSON (FAPI spec §5.2.3: the TPM's capabilities as FAPI
 * reports them): who made the TPM, whether it is a simulator, the persistent handles it holds, and
 * its dictionary-attack state. Parsed defensively: a field that is missing or of the wrong type is
 * simply unknown.
 */

export interface TpmInfo {
  /** TPM_PT_MANUFACTURER as text, e.g. "IFX", "STM", "IBM". */
  readonly manufacturer: string;
  /** TPM_PT_VENDOR_STRING_1..4 as text, e.g. "SLB9670", "SW TPM". */
  readonly vendor: string;
  /** TPM_PT_FIRMWARE_VERSION_1/2 as "a.b.c.d". */
  readonly firmware: string;
  /** True for swtpm and the IBM/Microsoft reference simulators: no hardware protection. */
  readonly simulator: boolean;
  readonly persistentHandles: readonly number[];
  readonly lockout: {
    /** TPMA_PERMANENT.inLockout (TPM 2.0 Part 2 §8.6, bit 9). */
    readonly inLockout: boolean;
    readonly counter?: number;
    readonly maxTries?: number;
    /** Seconds for one failure to be forgotten (TPM_PT_LOCKOUT_INTERVAL). */
    readonly interval?: number;
  };
}

type Json = unknown;

function isRecord(v: Json): v is Record<string, Json> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Four big-endian bytes of a TPM property as ASCII, without NULs and padding. */
function fourChars(value: number | undefined): string {
  if (value === undefined) return '';
  const v = value >>> 0;
  let s = '';
  for (const shift of [24, 16, 8, 0]) {
    const c = (v >>> shift) & 0xff;
    if (c >= 0x20 && c < 0x7f) s += String.fromCharCode(c);
  }
  return s.trim();
}

function capability(caps: Json[], description: string): Json {
  for (const c of caps) {
    if (isRecord(c) && c['description'] === description && isRecord(c['info'])) return c['info']['data'];
  }
  return undefined;
}

function properties(data: Json): Map<string, number> {
  const out = new Map<string, number>();
  if (!Array.isArray(data)) return out;
  for (const p of data) {
    if (isRecord(p) && typeof p['property'] === 'string' && typeof p['value'] === 'number') out.set(p['property'], p['value']);
  }
  return out;
}

/** Parses Fapi_GetInfo's JSON text. Returns undefined if it is not the expected shape at all. */
export function parseTpmInfo(text: string): TpmInfo | undefined {
  let root: Json;
  try {
    root = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!isRecord(root) || !Array.isArray(root['capabilities'])) return undefined;
  const caps = root['capabilities'];
  const fixed = properties(capability(caps, 'properties-fixed'));
  const variable = properties(capability(caps, 'properties-variable'));
  const handlesData = capability(caps, 'handles-persistent');
  const persistentHandles = Array.isArray(handlesData)
    ? handlesData.filter((h): h is number => typeof h === 'number').map((h) => h >>> 0)
    : [];
  const manufacturer = fourChars(fixed.get('MANUFACTURER'));
  const vendor = ['VENDOR_STRING_1', 'VENDOR_STRING_2', 'VENDOR_STRING_3', 'VENDOR_STRING_4']
    .map((k) => fourChars(fixed.get(k))).join(' ').replace(/\s+/g, ' ').trim();
  const fw1 = fixed.get('FIRMWARE_VERSION_1');
  const fw2 = fixed.get('FIRMWARE_VERSION_2');
  const firmware = fw1 === undefined ? '' : [fw1 >>> 16, fw1 & 0xffff, ...(fw2 === undefined ? [] : [fw2 >>> 16, fw2 & 0xffff])].join('.');
  // swtpm and the TCG reference simulators (IBM, Microsoft) report vendor "SW TPM" / "Xeno".
  const simulator = /SW\s*TPM/i.test(vendor) || /xeno/i.test(vendor) || manufacturer === 'MSFT' && /simulator/i.test(vendor);
  const permanent = variable.get('PERMANENT');
  const counter = variable.get('LOCKOUT_COUNTER');
  const maxTries = variable.get('MAX_AUTH_FAIL');
  const interval = variable.get('LOCKOUT_INTERVAL');
  return {
    manufacturer,
    vendor,
    firmware,
    simulator,
    persistentHandles,
    lockout: {
      inLockout: permanent !== undefined && (permanent & (1 << 9)) !== 0,
      ...(counter === undefined ? {} : { counter }),
      ...(maxTries === undefined ? {} : { maxTries }),
      ...(interval === undefined ? {} : { interval }),
    },
  };
}
