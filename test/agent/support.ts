/**
 * Shared set-up for agent tests: a temp directory, an ingest X25519 key pair made at test time
 * (never committed), its public half as the pinned PEM, and a configuration document to adjust.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { MqttRig } from '../../scripts/lib/mqtt-rig.ts';
import { parseAgentConfig, type AgentConfig } from '../../src/agent/config.ts';
import { generateX25519Pem, x25519PrivateFromPem } from '../../src/cose/keys.ts';

export interface AgentTestEnv {
  readonly dir: string;
  readonly ingestPrivateKey: Uint8Array;
  readonly ingestPrivatePem: string;
  readonly publicKeyFile: string;
  config(over?: Record<string, unknown>): Record<string, unknown>;
  /** A self-signed P-256 certificate (openssl) valid for `days` days; returns its path. */
  certificate(days: number): string;
  cleanup(): void;
}

export function agentTestEnv(prefix = 'vitalseal-agent-'): AgentTestEnv {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const { privatePem, publicPem } = generateX25519Pem();
  const publicKeyFile = join(dir, 'ingest.pub');
  writeFileSync(publicKeyFile, publicPem);
  return {
    dir,
    ingestPrivateKey: x25519PrivateFromPem(privatePem),
    ingestPrivatePem: privatePem,
    publicKeyFile,
    config(over = {}) {
      return {
        device: { id: 'bed-7' },
        sealing: { alg: 'chacha20-poly1305', ingestPublicKeyFile: publicKeyFile, epochMessages: 50, epochSeconds: 60 },
        sources: [{ type: 'simulated', id: 'patient', seed: 7 }],
        batch: { windowMs: 100 },
        queue: { dir: join(dir, 'queue'), segmentBytes: 64 * 1024 },
        transport: { primary: { kind: 'mqtts', host: '127.0.0.1', port: 8883 } },
        uplink: { backoffInitialMs: 50, backoffMaxMs: 400 },
        metrics: { listen: '127.0.0.1:0' },
        status: { socket: join(dir, 'agent.sock') },
        log: { level: 'debug' },
        ...over,
      };
    },
    certificate(days) {
      const key = join(dir, `cert-${days}.key`);
      const crt = join(dir, `cert-${days}.pem`);
      execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', crt,
        '-days', String(days), '-subj', '/CN=bed-7'], { stdio: 'ignore' });
      rmSync(key, { force: true });
      return crt;
    },
    cleanup() {
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Waits for a real asynchronous outcome (a delivery, a reconnect), polling every 25 ms. */
export async function until(cond: () => boolean, what: string, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** What an agent talking to an MQTT rig needs on disk: the fleet root, the pinned ingest key, a store passphrase (0600). */
export interface RigAgentFiles {
  readonly dir: string;
  readonly ca: string;
  readonly ingestPub: string;
  readonly pass: string;
  /** An MQTTS agent configuration for `deviceId` against the rig's broker; `transport` and `extra` add to it. */
  config(deviceId: string, transport: Record<string, unknown>, extra?: Record<string, unknown>): AgentConfig;
  /** The same as a configuration document (what `vitalseal agent run --config` reads). */
  document(deviceId: string, transport: Record<string, unknown>, extra?: Record<string, unknown>): Record<string, unknown>;
  cleanup(): void;
}

export function rigAgentFiles(rig: MqttRig, prefix: string): RigAgentFiles {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const ca = join(dir, 'fleet-root.pem');
  writeFileSync(ca, rig.fleet.rootPem);
  const ingestPub = join(dir, 'ingest.pub');
  writeFileSync(ingestPub, rig.ingestPublicKeyPem);
  const pass = join(dir, 'store.pass');
  writeFileSync(pass, `pass-${process.pid}-${Date.now()}`, { mode: 0o600 });
  const document = (deviceId: string, transport: Record<string, unknown>, extra: Record<string, unknown> = {}): Record<string, unknown> => ({
    device: { id: deviceId },
    sealing: { alg: 'chacha20-poly1305', ingestPublicKeyFile: ingestPub, epochMessages: 50, epochSeconds: 60 },
    sources: [{ type: 'simulated', id: 'patient', seed: 11, ecgHz: 50 }],
    batch: { windowMs: 100 },
    queue: { dir: join(dir, `queue-${deviceId}`) },
    transport: { primary: { kind: 'mqtts', host: '127.0.0.1', port: rig.broker.port, serverName: 'localhost', caFile: ca, ...transport } },
    uplink: { backoffInitialMs: 50, backoffMaxMs: 400 },
    metrics: { listen: false },
    status: { socket: join(dir, `${deviceId}.sock`) },
    ...extra,
  });
  return {
    dir, ca, ingestPub, pass, document,
    config: (deviceId, transport, extra = {}) => parseAgentConfig(document(deviceId, transport, extra), { baseDir: dir }),
    cleanup() {
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
