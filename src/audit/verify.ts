/**
 * Verifies an audit log (entry.ts) and says where it was tampered with.
 *
 * Each line is checked against the one before it: its `seq` must be one more, and its `prev` must be
 * the hash of the previous line's bytes. A break is classified from the sequence numbers of the
 * whole file: a gap whose missing numbers appear nowhere is a deletion; a gap or step back whose
 * numbers appear elsewhere is a reordering; a number used twice is an insertion; an unbroken
 * numbering with a wrong `prev` means the previous line was edited. An attacker who rewrites the
 * chain after an edit (recomputing every later `prev`) is caught by the next checkpoint, whose
 * signature covers the old chain. A file cut inside a line is a truncated tail. Whole lines cut from
 * the end after the last checkpoint cannot be seen in the file alone: `requireFinalCheckpoint`
 * (a cleanly closed log ends with one) or an `anchor` (a seq and hash seen earlier, e.g. by the
 * ingest service) closes that gap.
 *
 * @example
 *   const result = verifyAuditLog(readFileSync('audit.log'), { publicKey: identityPem });
 *   for (const p of result.problems) console.log(`line ${p.line}: ${p.kind}: ${p.message}`);
 */
import { createPublicKey, verify, type KeyObject } from 'node:crypto';
import { checkpointPayload, hashLine, parseLine, type AuditLine, type CheckpointLine } from './entry.ts';

export type AuditProblemKind =
  | 'malformed' | 'secret-suspect' | 'missing-header' | 'edited' | 'deleted' | 'inserted' | 'reordered'
  | 'truncated' | 'bad-signature' | 'wrong-signer' | 'unsealed-tail';

export interface AuditProblem {
  /** 1-based line number in the file. */
  readonly line: number;
  readonly kind: AuditProblemKind;
  readonly message: string;
}

export interface VerifyAuditOptions {
  /** The signer's public key (PEM or KeyObject); without it, checkpoint signatures are not checked. */
  readonly publicKey?: string | KeyObject;
  /** A line seen earlier (from `AuditLog.head` or a previous verification) that must still be there, unchanged. */
  readonly anchor?: { readonly seq: number; readonly hash: string };
  /** Require the log to end with a checkpoint, as a cleanly closed log does. */
  readonly requireFinalCheckpoint?: boolean;
}

export interface AuditVerifyResult {
  readonly ok: boolean;
  readonly logId: string | undefined;
  readonly lines: number;
  readonly events: number;
  readonly checkpoints: number;
  /** Checkpoints whose signature verified with the given key. */
  readonly verifiedCheckpoints: number;
  readonly signaturesChecked: boolean;
  /** Events after the last checkpoint: covered by the chain, not by a signature. */
  readonly uncheckpointedTail: number;
  /** Seq and hash of the last whole line: an anchor for the next verification. */
  readonly head: { readonly seq: number; readonly hash: string } | undefined;
  readonly problems: readonly AuditProblem[];
}

interface Parsed {
  readonly n: number;
  readonly hash: string;
  readonly text: string;
  readonly line: AuditLine | undefined;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function splitLines(bytes: Uint8Array): { lines: Uint8Array[]; partial: Uint8Array | undefined } {
  const lines: Uint8Array[] = [];
  let start = 0;
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] === 0x0a) {
      lines.push(bytes.subarray(start, i));
      start = i + 1;
    }
  }
  return { lines, partial: start < bytes.length ? bytes.subarray(start) : undefined };
}

function range(a: number, b: number): string {
  return a === b ? `seq ${a}` : `seq ${a}-${b}`;
}

/** Verifies `log` (the file's bytes or text). Never throws on bad input: every finding is a problem. */
export function verifyAuditLog(log: Uint8Array | string, opts: VerifyAuditOptions = {}): AuditVerifyResult {
  const bytes = typeof log === 'string' ? new TextEncoder().encode(log) : log;
  const problems: AuditProblem[] = [];
  const report = (line: number, kind: AuditProblemKind, message: string) => problems.push({ line, kind, message });

  const { lines, partial } = splitLines(bytes);
  const parsed: Parsed[] = lines.map((b, i) => {
    let text = '';
    try {
      text = utf8.decode(b);
    } catch {
      report(i + 1, 'malformed', 'not UTF-8');
      return { n: i + 1, hash: hashLine(b), text, line: undefined };
    }
    const p = parseLine(text);
    if ('problem' in p) {
      report(i + 1, p.secret === true ? 'secret-suspect' : 'malformed', p.problem);
      return { n: i + 1, hash: hashLine(b), text, line: undefined };
    }
    return { n: i + 1, hash: hashLine(b), text, line: p.line };
  });
  if (partial !== undefined) {
    report(lines.length + 1, 'truncated', `the file ends inside a line (${partial.length} bytes without an end of line): the log was cut`);
  }

  let publicKey: KeyObject | undefined;
  let fingerprint: string | undefined;
  if (opts.publicKey !== undefined) {
    publicKey = typeof opts.publicKey === 'string' ? createPublicKey(opts.publicKey) : opts.publicKey;
    fingerprint = hashLine(publicKey.export({ format: 'der', type: 'spki' }));
  }

  // Where each seq occurs, to tell deletions from reorderings and insertions.
  const where = new Map<number, number[]>();
  for (const p of parsed) if (p.line !== undefined) where.set(p.line.seq, [...(where.get(p.line.seq) ?? []), p.n]);

  const first = parsed[0];
  let logId: string | undefined;
  if (first === undefined) {
    report(1, 'missing-header', 'the log is empty');
  } else if (first.line?.type !== 'header') {
    report(1, 'missing-header', 'line 1 is not the log header: the start of the log was removed or replaced');
  } else {
    logId = first.line.log;
  }

  let events = 0;
  let checkpoints = 0;
  let verified = 0;
  let lastCheckpointLine = 0;
  for (let i = 0; i < parsed.length; i++) {
    const cur = parsed[i] as Parsed;
    const line = cur.line;
    if (line === undefined) continue;
    if (line.type === 'event') events++;
    if (line.type === 'header' && i > 0) report(cur.n, 'inserted', 'a second header inside the log');
    if (i > 0) {
      const before = parsed[i - 1] as Parsed;
      const lastSeq = before.line?.seq;
      if (lastSeq === undefined) {
        // The previous line is malformed (already reported); the chain resumes from this line.
      } else if (line.seq === lastSeq + 1) {
        if (line.prev !== before.hash) {
          report(before.n, 'edited', `line ${before.n} (seq ${lastSeq}) was altered: its hash no longer matches the prev recorded in line ${cur.n}`);
        }
      } else if (line.seq > lastSeq + 1) {
        const elsewhere: number[] = [];
        for (let s = lastSeq + 1; s < line.seq; s++) elsewhere.push(...(where.get(s) ?? []));
        if (elsewhere.length > 0) {
          report(cur.n, 'reordered', `seq ${line.seq} follows seq ${lastSeq}; ${range(lastSeq + 1, line.seq - 1)} stands at line ${elsewhere.join(', ')}: entries were moved`);
        } else {
          report(cur.n, 'deleted', `${range(lastSeq + 1, line.seq - 1)} missing between line ${before.n} and line ${cur.n}: entries were removed`);
        }
      } else {
        const others = (where.get(line.seq) ?? []).filter((n) => n !== cur.n);
        if (others.length === 0) {
          report(cur.n, 'reordered', `seq ${line.seq} comes after seq ${lastSeq}: entries were moved`);
        } else {
          const same = others.filter((n) => parsed[n - 1]?.text === cur.text);
          report(cur.n, 'inserted', same.length > 0
            ? `line ${cur.n} repeats line ${same[0]} (seq ${line.seq}): an entry was replayed`
            : `line ${cur.n} reuses seq ${line.seq} of line ${others[0]}: an entry was inserted`);
        }
      }
    }
    if (line.type === 'checkpoint') {
      checkpoints++;
      lastCheckpointLine = cur.n;
      if (publicKey !== undefined && logId !== undefined) {
        if (line.signer !== fingerprint) {
          report(cur.n, 'wrong-signer', `checkpoint (seq ${line.seq}) names signer ${line.signer.slice(0, 16)}..., not the given key ${(fingerprint as string).slice(0, 16)}...`);
        } else if (!checkSignature(publicKey, logId, line)) {
          report(cur.n, 'bad-signature', `checkpoint (seq ${line.seq}) signature does not verify: the lines before it were rewritten or the checkpoint was forged`);
        } else {
          verified++;
        }
      }
    }
  }

  const lastParsed = [...parsed].reverse().find((p) => p.line !== undefined);
  const head = lastParsed?.line === undefined ? undefined : { seq: lastParsed.line.seq, hash: lastParsed.hash };
  const tailEvents = parsed.slice(lastCheckpointLine).filter((p) => p.line?.type === 'event').length;
  if (opts.requireFinalCheckpoint === true && parsed[parsed.length - 1]?.line?.type !== 'checkpoint') {
    report(parsed.length, 'unsealed-tail', `the log does not end with a checkpoint: ${tailEvents} entries after ${lastCheckpointLine === 0 ? 'the start' : `line ${lastCheckpointLine}`} are not covered by a signature (the log was cut, or not closed cleanly)`);
  }
  if (opts.anchor !== undefined) {
    const { seq, hash } = opts.anchor;
    const at = where.get(seq);
    if (at === undefined) {
      if (head === undefined || seq > head.seq) {
        report(parsed.length + 1, 'truncated', `the log ends at seq ${head?.seq ?? 'none'}, but the anchor names seq ${seq}: entries were removed from the end`);
      } else {
        report(parsed.length, 'deleted', `seq ${seq} named by the anchor is not in the log`);
      }
    } else if (!at.some((n) => parsed[n - 1]?.hash === hash)) {
      report(at[0] as number, 'edited', `line ${at[0]} (seq ${seq}) does not match the anchor's hash: it was altered`);
    }
  }

  problems.sort((a, b) => a.line - b.line);
  return {
    ok: problems.length === 0,
    logId,
    lines: parsed.length,
    events,
    checkpoints,
    verifiedCheckpoints: verified,
    signaturesChecked: publicKey !== undefined,
    uncheckpointedTail: tailEvents,
    head,
    problems,
  };
}

function checkSignature(key: KeyObject, logId: string, line: CheckpointLine): boolean {
  const payload = checkpointPayload(logId, line);
  const sig = Buffer.from(line.sig, 'base64');
  try {
    if (line.alg === 'ed25519') return key.asymmetricKeyType === 'ed25519' && verify(null, payload, key, sig);
    return key.asymmetricKeyType === 'ec' && verify('sha256', payload, { key, dsaEncoding: 'der' }, sig);
  } catch {
    return false;
  }
}
