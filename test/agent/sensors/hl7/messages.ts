/** HL7 v2 ORU^R01 test messages, built field by field so each test changes only what it is about. */
export function oru(obx: string[], o: { seps?: string; type?: string; version?: string; control?: string; sender?: string } = {}): string {
  const seps = o.seps ?? '|^~\\&';
  const f = seps[0] as string;
  const c = seps[1] as string;
  const msh = ['MSH', seps.slice(1), o.sender ?? 'MONITOR', 'ICU', 'VITALSEAL', 'HOSP', '20250610115959+0000', '',
    o.type ?? `ORU${c}R01${c}ORU_R01`, o.control ?? 'MSG0001', 'P', o.version ?? '2.6'].join(f);
  const pid = ['PID', '1', '', `123456${c}${c}${c}HOSP${c}MR`, '', `DOE${c}JANE`].join(f);
  const obr = ['OBR', '1', '', '', `VITALS${c}Vital signs`, '', '', '20250610115900+0000'].join(f);
  return [msh, pid, obr, ...obx].join('\r') + '\r';
}

export const obx = (n: number, code: string, value: string, unit: string, o: { type?: string; status?: string; time?: string } = {}) =>
  ['OBX', String(n), o.type ?? 'NM', code, '', value, unit, '', '', '', '', o.status ?? 'F', '', '', o.time ?? '20250610115930+0000'].join('|');
