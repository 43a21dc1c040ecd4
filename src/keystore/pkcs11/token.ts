/**
 * Choosing the token a PKCS #11 URI names: RFC 7512 §2.4 (a URI matches what all of its attributes
 * match). The PKCS #11 text fields are fixed-size and blank-padded (v2.40 §3.2-§3.3), so trailing
 * blanks are not part of a value on either side.
 */
import { KeyStoreError } from '../../util/errors.ts';
import { CKF_TOKEN_INITIALIZED } from './constants.ts';
import type { Pkcs11Uri } from './uri.ts';

/** What the module says about one slot and its token, as plain values. */
export interface SlotDescription {
  /** CK_SLOT_ID. */
  readonly slotId: bigint;
  readonly slotDescription: string;
  readonly slotManufacturer: string;
  readonly tokenLabel: string;
  readonly tokenManufacturer: string;
  readonly tokenModel: string;
  readonly tokenSerial: string;
  readonly tokenFlags: number;
}

export interface LibraryDescription {
  readonly manufacturer: string;
  readonly description: string;
  readonly version: { readonly major: number; readonly minor: number };
}

/** A PKCS #11 text field without its blank padding. */
export function unpad(field: string): string {
  return field.replace(/ +$/, '');
}

function same(want: string | undefined, have: string): boolean {
  return want === undefined || unpad(want) === unpad(have);
}

/** True when every token/slot/library attribute of `uri` matches. Object attributes are ignored. */
export function uriMatches(uri: Pkcs11Uri, slot: SlotDescription, library: LibraryDescription): boolean {
  return same(uri.token, slot.tokenLabel)
    && same(uri.manufacturer, slot.tokenManufacturer)
    && same(uri.model, slot.tokenModel)
    && same(uri.serial, slot.tokenSerial)
    && same(uri.slotDescription, slot.slotDescription)
    && same(uri.slotManufacturer, slot.slotManufacturer)
    && (uri.slotId === undefined || uri.slotId === slot.slotId)
    && same(uri.libraryManufacturer, library.manufacturer)
    && same(uri.libraryDescription, library.description)
    && (uri.libraryVersion === undefined
      || (uri.libraryVersion.major === library.version.major && uri.libraryVersion.minor === library.version.minor));
}

function describeSlot(s: SlotDescription): string {
  return `"${unpad(s.tokenLabel)}" (serial ${unpad(s.tokenSerial) || '-'}, slot ${s.slotId})`;
}

/**
 * The one initialised token `uri` names. Throws 'token-not-found' (listing what is there) or
 * 'token-ambiguous' (asking for a serial) otherwise. Uninitialised tokens (SoftHSM always shows a
 * free one) are never chosen.
 */
export function selectToken(uri: Pkcs11Uri, uriText: string, slots: readonly SlotDescription[], library: LibraryDescription, modulePath: string): SlotDescription {
  const initialised = slots.filter((s) => (s.tokenFlags & CKF_TOKEN_INITIALIZED) !== 0);
  const matching = initialised.filter((s) => uriMatches(uri, s, library));
  if (matching.length === 1) return matching[0] as SlotDescription;
  if (matching.length === 0) {
    const seen = initialised.length === 0 ? 'no initialised token' : `tokens ${initialised.map(describeSlot).join(', ')}`;
    throw new KeyStoreError('token-not-found', `no token matches ${uriText} in ${modulePath}; the module shows ${seen}`);
  }
  throw new KeyStoreError('token-ambiguous',
    `${uriText} matches ${matching.length} tokens (${matching.map(describeSlot).join(', ')}); add ;serial=... to the URI to pick one`);
}
