/**
 * The enrolment endpoint's address (RFC 7030 EST over HTTPS), parsed and checked. Apart from the
 * client (est-client.ts) so that checking a configuration does not load the enrolment code.
 *
 * @example
 *   const endpoint = parseEstUrl('https://ingest.hospital.example:8443');   // { host, port: 8443, ... }
 */
import { ApiMisuse } from '../util/errors.ts';

/** Where the enrolment endpoint is: from an `https://host[:port]` URL. */
export interface EstEndpoint {
  readonly host: string;
  readonly port: number;
  /** The name the server's certificate must carry (DNS-ID or IP-ID, RFC 6125): the URL's host. */
  readonly serverName: string;
  /** `https://host:port`, for messages. */
  readonly origin: string;
}

/**
 * Parses the endpoint's URL: `https://` only, a host and an optional port, nothing else (no path:
 * the EST paths are well-known; no credentials: they never go in a URL). Throws `ApiMisuse('invalid-url')`.
 */
export function parseEstUrl(text: string): EstEndpoint {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new ApiMisuse('invalid-url', 'the enrolment URL is not a URL (expected https://HOST[:PORT])');
  }
  if (url.protocol !== 'https:') throw new ApiMisuse('invalid-url', 'the enrolment URL must be https://HOST[:PORT]: enrolment runs over TLS only');
  if (url.username !== '' || url.password !== '') throw new ApiMisuse('invalid-url', 'the enrolment URL must not carry credentials');
  if ((url.pathname !== '/' && url.pathname !== '') || url.search !== '' || url.hash !== '') {
    throw new ApiMisuse('invalid-url', 'the enrolment URL names the server only (https://HOST[:PORT]); the paths are /.well-known/est/...');
  }
  const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
  if (host.length === 0) throw new ApiMisuse('invalid-url', 'the enrolment URL has no host');
  const port = url.port === '' ? 443 : Number(url.port);
  return { host, port, serverName: host, origin: `https://${host.includes(':') ? `[${host}]` : host}:${port}` };
}
