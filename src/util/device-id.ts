/**
 * The device id rule, the one every part checks against: 1-64 characters of A-Z a-z 0-9 . _ -,
 * starting with a letter or digit. Safe as a SenML base name (RFC 8428 §4.5.1), in a URN, a
 * certificate CN, an MQTT username and topic level, a file name and a log line.
 */
export const DEVICE_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export function isDeviceId(id: unknown): id is string {
  return typeof id === 'string' && DEVICE_ID_PATTERN.test(id);
}
