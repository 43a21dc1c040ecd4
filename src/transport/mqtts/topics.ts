/**
 * The MQTT topic scheme and content types (docs/transport-mqtts.md "Topics"):
 *
 *   vitals/<device-id>/v1                     a device publishes its sealed messages here (QoS 1)
 *   $share/vitalseal/vitals/+/v1              every ingest instance subscribes here (MQTT v5 §4.8.2)
 *
 * The device id in the topic is trusted only because the broker lets a device publish under its own
 * id alone (the certificate CN is the MQTT username; docs: "Access rules"). The ingest still checks
 * it against the id inside the sealed payload.
 *
 * @example
 *   vitalsTopic('bed-7');                      // 'vitals/bed-7/v1'
 *   deviceIdFromTopic('vitals/bed-7/v1');      // 'bed-7'
 *   contentTypeFor('cose-encrypt');            // 'application/cose; cose-type="cose-encrypt"'
 */
import type { CoseContentFormat } from '../types.ts';
import { isDeviceId } from '../../util/device-id.ts';

export const TOPIC_VERSION = 'v1';
export const SHARE_GROUP = 'vitalseal';
export const INGEST_SUBSCRIPTION = `$share/${SHARE_GROUP}/vitals/+/${TOPIC_VERSION}`;

/** RFC 9052 §11.2: the media type with its cose-type parameter, as MQTT v5's Content Type property. */
const CONTENT_TYPES: Readonly<Record<CoseContentFormat, string>> = Object.freeze({
  'cose-encrypt': 'application/cose; cose-type="cose-encrypt"',
  'cose-encrypt0': 'application/cose; cose-type="cose-encrypt0"',
});

export function vitalsTopic(deviceId: string): string {
  if (!isDeviceId(deviceId)) throw new RangeError('vitalsTopic: not a device id');
  return `vitals/${deviceId}/${TOPIC_VERSION}`;
}

/** The device id of a `vitals/<id>/v1` topic, or undefined for anything else. */
export function deviceIdFromTopic(topic: string): string | undefined {
  const parts = topic.split('/');
  if (parts.length !== 3 || parts[0] !== 'vitals' || parts[2] !== TOPIC_VERSION) return undefined;
  const id = parts[1] as string;
  return isDeviceId(id) ? id : undefined;
}

export function contentTypeFor(format: CoseContentFormat): string {
  return CONTENT_TYPES[format];
}

/**
 * The COSE format a Content Type names, or undefined. Exact match on our two strings, and the same
 * with the parameter value unquoted or different whitespace (RFC 9110 §8.3.1: type, subtype and
 * parameter names are case-insensitive).
 */
export function formatFromContentType(contentType: string | undefined): CoseContentFormat | undefined {
  if (contentType === undefined || contentType.length > 128) return undefined;
  const m = /^\s*application\/cose\s*;\s*cose-type\s*=\s*("?)(cose-encrypt0?)\1\s*$/i.exec(contentType);
  if (m === null) return undefined;
  const value = m[2] as string;
  // The parameter value itself is case-sensitive (RFC 9052 §11.2 registers it in lower case).
  return value === 'cose-encrypt' || value === 'cose-encrypt0' ? value : undefined;
}

/**
 * The CBOR tag a COSE object of this format starts with (RFC 9052 §2): 96 (0xD8 0x60) for
 * COSE_Encrypt, 16 (0xD0) for COSE_Encrypt0. A cheap guard against sending plaintext by mistake.
 */
export function hasCoseTag(payload: Uint8Array, format: CoseContentFormat): boolean {
  if (format === 'cose-encrypt') return payload.length > 2 && payload[0] === 0xd8 && payload[1] === 0x60;
  return payload.length > 1 && payload[0] === 0xd0;
}
