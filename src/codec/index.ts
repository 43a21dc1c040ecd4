/**
 * vitalseal/codec: strict CBOR, SenML (RFC 8428) and the vitals profile carried inside COSE.
 *
 * @example
 *   import { encodeVitalsPack, decodeVitalsPack } from 'vitalseal/codec';
 *   const bytes = encodeVitalsPack({ deviceId: 'bed-7', readings: [{ kind: 'spo2', time: Date.now(), value: 97 }], ecg: [] });
 *   decodeVitalsPack(bytes).readings[0].value;   // 97
 */
export { CborRaw, CborTag, decodeCbor, DEFAULT_CBOR_LIMITS, encodeCbor, headerBytes, scanCbor, type CborDecodeOptions, type CborLimits } from './cbor.ts';
export {
  DEFAULT_MAX_RECORDS, decodeSenmlCbor, decodeSenmlJson, encodeSenmlCbor, resolveSenml,
  type ResolvedRecord, type SenmlLimits, type SenmlPack, type SenmlRecord,
} from './senml.ts';
export {
  decodeVitalsPack, ECG_LSB_VOLTS, encodeVitalsPack, isValidDeviceId, VITALS,
  type EcgStrip, type VitalKind, type VitalReading, type VitalsBatch,
} from './vitals.ts';
