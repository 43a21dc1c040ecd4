/**
 * A private network between a hospital ward and the cloud, on this machine, for the end-to-end
 * suite: a network namespace (the ward, where device agents run) joined to the host namespace (the
 * cloud side: broker, ingest, relays bound to the host end's address) by a veth pair on its own /30.
 * Impairments act on that link only; loopback traffic between broker and ingest is untouched.
 *
 *   ward namespace                                  host namespace
 *   agents ── <ward if> 10.R.S.2/30 ══ veth ══ 10.R.S.1/30 <host if> ── broker, ingest, UDP relay
 *             nftables table (ward side):           tbf qdisc (host side egress)
 *             random drop both ways (numgen),
 *             tbf qdisc (ward side egress)
 *
 * What stands in for netem: this machine's kernel (and CI's) has no netem qdisc
 * (CONFIG_NET_SCH_NETEM is not set), so
 *   loss        nftables rules `numgen random mod 1000 < N drop` in the ward, both directions,
 *               counted by named nft counters;
 *   bandwidth   the tbf qdisc on both ends (queueing delay under load comes with it);
 *   outage      `ip link set <ward if> down` (the ward loses its route: connects fail at once,
 *               open connections stall), then up;
 *   delay, reordering, duplication: a user-space relay (scripts/lib/udp-relay.ts) on the host end,
 *               for the UDP (CoAPS) path; a TCP stream cannot be reordered or duplicated as seen
 *               by the application, so MQTTS gets loss, bandwidth and outages.
 *
 * Needs root (CAP_NET_ADMIN), iproute2 (`ip`, `tc`) and nftables (`nft`). Names carry the creating
 * process id, so `removeStaleWards()` can delete what a crashed earlier run left; deleting the
 * namespace deletes the veth pair and the nft table with it.
 *
 * @example
 *   const ward = await createWardNetwork();
 *   // start services bound to ward.hostIp; run agents as [...ward.exec, node, ...]
 *   await ward.setLoss(0.25);
 *   await ward.linkDown(); ...; await ward.linkUp();
 *   await ward.destroy();
 */
import { execFile, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { pidAlive } from './processes.ts';

const run = promisify(execFile);

const NS_RE = /^vse2e-(\d+)-([0-9a-f]{6})$/;
const TABLE = 'vitalseal_impair';

export interface WardCounters {
  /** Packets the loss rules dropped, ward → cloud and cloud → ward. */
  readonly droppedOut: number;
  readonly droppedIn: number;
}

export interface WardNetwork {
  /** The namespace's name (`vse2e-<pid>-<hex>`). */
  readonly name: string;
  /** The host end's address: where services for the ward must listen. */
  readonly hostIp: string;
  readonly wardIp: string;
  readonly hostIf: string;
  readonly wardIf: string;
  /** Prefix that runs a command inside the ward: `[...ward.exec, cmd, ...args]`. */
  readonly exec: readonly string[];
  /** Random loss on the link, both directions, as a fraction (0 turns it off). */
  setLoss(fraction: number): Promise<void>;
  /** Bandwidth limit in kbit/s on both ends (tbf), or `undefined` for none. */
  setRate(kbitPerSecond: number | undefined): Promise<void>;
  /** The link goes down (an unplugged cable) until `linkUp`. */
  linkDown(): Promise<void>;
  linkUp(): Promise<void>;
  counters(): Promise<WardCounters>;
  /** Deletes the namespace (and with it the veth pair and the nft table). Safe to call twice. */
  destroy(): Promise<void>;
}

/** Why the ward network cannot be built here, or `undefined` when it can. */
export function wardNetworkUnavailable(): string | undefined {
  if (process.platform !== 'linux') return 'network namespaces need Linux';
  if (process.getuid?.() !== 0) return 'network namespaces, veth pairs and nftables need root';
  for (const [binary, pkg] of [['ip', 'iproute2'], ['tc', 'iproute2'], ['nft', 'nftables']] as const) {
    if (spawnSync('sh', ['-c', `command -v ${binary}`]).status !== 0) return `${binary} not found: install the Debian package "${pkg}" (scripts/setup does)`;
  }
  return undefined;
}

async function sh(cmd: string, args: readonly string[], input?: string): Promise<string> {
  try {
    if (input === undefined) return (await run(cmd, [...args])).stdout;
    return await new Promise<string>((resolve, reject) => {
      const child = execFile(cmd, [...args], (err, stdout, stderr) => (err === null ? resolve(stdout) : reject(Object.assign(err, { stderr }))));
      child.stdin?.end(input);
    });
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')}: ${(err.stderr ?? err.message).trim()}`);
  }
}

/** Deletes ward namespaces whose creating process is gone; returns their names. */
export async function removeStaleWards(): Promise<string[]> {
  const listed = await sh('ip', ['netns', 'list']).catch(() => '');
  const removed: string[] = [];
  for (const line of listed.split('\n')) {
    const name = line.split(' ')[0] ?? '';
    const m = NS_RE.exec(name);
    if (m === null || pidAlive(Number(m[1]))) continue;
    await sh('ip', ['netns', 'del', name]).catch(() => undefined);
    removed.push(name);
  }
  return removed;
}

/** A /30 in 10.213.0.0/16 that no interface here uses yet. */
async function freeSubnet(): Promise<[string, string]> {
  const used = await sh('ip', ['-4', '-o', 'addr', 'show']);
  for (let i = 0; i < 100; i++) {
    const b = randomBytes(2);
    const third = b[0] as number;
    const fourth = ((b[1] as number) & 0xfc) % 252;
    const base = `10.213.${third}.`;
    const hostIp = `${base}${fourth + 1}`;
    const wardIp = `${base}${fourth + 2}`;
    if (!used.includes(` ${hostIp}/`) && !used.includes(` ${wardIp}/`)) return [hostIp, wardIp];
  }
  throw new Error('no free /30 in 10.213.0.0/16');
}

export async function createWardNetwork(): Promise<WardNetwork> {
  const why = wardNetworkUnavailable();
  if (why !== undefined) throw new Error(`ward network: ${why}`);
  await removeStaleWards();
  const tag = randomBytes(3).toString('hex');
  const name = `vse2e-${process.pid}-${tag}`;
  // Interface names are at most 15 bytes.
  const hostIf = `vse${tag}h`;
  const wardIf = `vse${tag}w`;
  const [hostIp, wardIp] = await freeSubnet();
  let destroyed = false;
  const destroy = async () => {
    if (destroyed) return;
    destroyed = true;
    await sh('ip', ['netns', 'del', name]).catch(() => undefined);
    // Normally gone with the namespace; a failure half-way through set-up may leave it alone.
    await sh('ip', ['link', 'del', hostIf]).catch(() => undefined);
  };
  process.once('exit', () => {
    if (!destroyed) spawnSync('ip', ['netns', 'del', name]);
  });
  try {
    await sh('ip', ['netns', 'add', name]);
    await sh('ip', ['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', wardIf, 'netns', name]);
    await sh('ip', ['addr', 'add', `${hostIp}/30`, 'dev', hostIf]);
    await sh('ip', ['link', 'set', hostIf, 'up']);
    await sh('ip', ['-n', name, 'addr', 'add', `${wardIp}/30`, 'dev', wardIf]);
    await sh('ip', ['-n', name, 'link', 'set', wardIf, 'up']);
    await sh('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
    await sh('ip', ['netns', 'exec', name, 'nft', '-f', '-'], `table inet ${TABLE} {
  counter dropped_out {
  }
  counter dropped_in {
  }
  chain egress {
    type filter hook output priority 0; policy accept;
  }
  chain ingress {
    type filter hook input priority 0; policy accept;
  }
}
`);
  } catch (e) {
    await destroy();
    throw e;
  }

  const counter = (json: string, which: string): number => {
    const doc = JSON.parse(json) as { nftables: { counter?: { name: string; packets: number } }[] };
    return doc.nftables.find((x) => x.counter?.name === which)?.counter?.packets ?? 0;
  };

  return {
    name, hostIp, wardIp, hostIf, wardIf,
    exec: ['ip', 'netns', 'exec', name],
    async setLoss(fraction) {
      if (!(fraction >= 0 && fraction < 1)) throw new RangeError('ward network: loss is a fraction in [0, 1)');
      const permille = Math.round(fraction * 1000);
      const rules = permille === 0 ? '' : [
        `add rule inet ${TABLE} egress oifname "${wardIf}" numgen random mod 1000 < ${permille} counter name dropped_out drop`,
        `add rule inet ${TABLE} ingress iifname "${wardIf}" numgen random mod 1000 < ${permille} counter name dropped_in drop`,
      ].join('\n');
      await sh('ip', ['netns', 'exec', name, 'nft', '-f', '-'], `flush chain inet ${TABLE} egress\nflush chain inet ${TABLE} ingress\n${rules}\n`);
    },
    async setRate(kbit) {
      for (const [prefix, dev] of [[['-n', name], wardIf], [[], hostIf]] as const) {
        if (kbit === undefined) await sh('tc', [...prefix, 'qdisc', 'del', 'dev', dev, 'root']).catch(() => undefined);
        else await sh('tc', [...prefix, 'qdisc', 'replace', 'dev', dev, 'root', 'tbf', 'rate', `${kbit}kbit`, 'burst', '16kb', 'latency', '400ms']);
      }
    },
    async linkDown() {
      await sh('ip', ['-n', name, 'link', 'set', wardIf, 'down']);
    },
    async linkUp() {
      await sh('ip', ['-n', name, 'link', 'set', wardIf, 'up']);
    },
    async counters() {
      const json = await sh('ip', ['netns', 'exec', name, 'nft', '-j', 'list', 'counters', 'table', 'inet', TABLE]);
      return { droppedOut: counter(json, 'dropped_out'), droppedIn: counter(json, 'dropped_in') };
    },
    destroy,
  };
}
