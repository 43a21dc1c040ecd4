/**
 * HL7 v2 original-mode acknowledgements (HL7 v2.5.1 §2.9.2): an ACK whose MSA-1 is AA (accepted:
 * sent only after the readings are in the durable queue), AE (error: content or storage) or AR
 * (reject: not a message this gateway processes), MSA-2 echoing the original MSH-10, and for AE/AR
 * an ERR segment with the table 0357 code, severity E and the reason as user message (ERR-8).
 */
import { component, components, type Hl7Message, type Separators } from './message.ts';
import { HL7_ERROR_TEXT, type Hl7ErrorCode } from './oru.ts';

const DEFAULT_SEPS: Separators = { field: '|', component: '^', repetition: '~', escape: '\\', subcomponent: '&' };

/** §2.7: escapes the separators in a value written into a field. */
export function escapeHl7(s: string, seps: Separators = DEFAULT_SEPS): string {
  let out = '';
  for (const c of s) {
    if (c === seps.escape) out += `${seps.escape}E${seps.escape}`;
    else if (c === seps.field) out += `${seps.escape}F${seps.escape}`;
    else if (c === seps.component) out += `${seps.escape}S${seps.escape}`;
    else if (c === seps.subcomponent) out += `${seps.escape}T${seps.escape}`;
    else if (c === seps.repetition) out += `${seps.escape}R${seps.escape}`;
    else if (c === '\r' || c === '\n') out += ' ';
    else out += c;
  }
  return out;
}

export interface AckOptions {
  readonly code: 'AA' | 'AE' | 'AR';
  /** The acknowledgement's own MSH-10. */
  readonly controlId: string;
  readonly now: Date;
  readonly error?: { readonly hl7Code: Hl7ErrorCode; readonly reason: string };
}

function hl7Timestamp(d: Date): string {
  const p = (n: number, w = 2) => String(n).padStart(w, '0');
  return `${d.getUTCFullYear()}${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}${p(d.getUTCHours())}${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}+0000`;
}

/**
 * The ACK for `original` (or for a message whose MSH could not be read: then sender/receiver are
 * empty and MSA-2 is empty too). Segments end with CR; the sender's separators are used back.
 */
export function buildAck(original: Hl7Message | undefined, o: AckOptions): Uint8Array {
  const seps = original?.separators ?? DEFAULT_SEPS;
  const msh = original?.segments[0];
  const f = seps.field;
  const e = (s: string) => escapeHl7(s, seps);
  const get = (n: number) => (msh === undefined ? '' : components(msh, n).map(e).join(seps.component));
  const trigger = msh === undefined ? '' : e(component(msh, 9, 2));
  const version = msh === undefined ? '2.5' : e(component(msh, 12) || '2.5');
  const processing = msh === undefined ? 'P' : e(component(msh, 11) || 'P');
  const enc = `${seps.component}${seps.repetition}${seps.escape}${seps.subcomponent}`;
  // Receiving and sending application/facility are swapped (§2.14.9.3-6).
  const mshOut = ['MSH', enc, get(5), get(6), get(3), get(4), hl7Timestamp(o.now), '',
    ['ACK', trigger, 'ACK'].join(seps.component), e(o.controlId), processing, version].join(f);
  const originalId = msh === undefined ? '' : e(component(msh, 10));
  const segments = [mshOut];
  const reason = o.error === undefined ? undefined : e(o.error.reason);
  segments.push(['MSA', o.code, originalId, ...(reason === undefined ? [] : [reason])].join(f));
  if (o.error !== undefined) {
    const err = [String(o.error.hl7Code), e(HL7_ERROR_TEXT[o.error.hl7Code]), 'HL70357'].join(seps.component);
    segments.push(['ERR', '', '', err, 'E', '', '', '', reason ?? ''].join(f));
  }
  return new Uint8Array(Buffer.from(`${segments.join('\r')}\r`, 'latin1'));
}
