/** `vitalseal agent`: usage, configuration errors, the Unsupported transport, status without an agent. */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { after, describe, it } from 'node:test';
import { main } from '../../src/cli/main.ts';
import { agentTestEnv } from '../agent/support.ts';

const env = agentTestEnv('vitalseal-cli-agent-');
after(() => env.cleanup());

async function run(args: string[]) {
  const out: string[] = [];
  const err: string[] = [];
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  stdout.on('data', (d: Buffer) => out.push(d.toString()));
  stderr.on('data', (d: Buffer) => err.push(d.toString()));
  const code = await main(args, { stdin: new PassThrough(), stdout, stderr, env: {} });
  return { code, stdout: out.join(''), stderr: err.join('') };
}

describe('vitalseal agent', () => {
  it('prints usage; run without --config is a usage error', async () => {
    assert.equal((await run(['agent', '--help'])).code, 0);
    const r = await run(['agent', 'run']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /run needs --config FILE/);
  });

  it('an invalid configuration file is reported field by field', async () => {
    const f = join(env.dir, 'bad.yaml');
    writeFileSync(f, 'device:\n  id: bed 7\nsources: []\n');
    const r = await run(['agent', 'run', '--config', f]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /device\.id: must be/);
    assert.match(r.stderr, /sources: must be a non-empty list/);
    assert.match(r.stderr, /\[config-invalid\]/);
  });

  it('an mqtts transport without its identity settings is refused, naming the field', async () => {
    const f = join(env.dir, 'agent.json');
    writeFileSync(f, JSON.stringify(env.config({ metrics: { listen: false } })));
    const r = await run(['agent', 'run', '--config', f]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /transport\.primary\.identity: is required for mqtts.*\[config-invalid\]/s);
  });

  it('status with no running agent says no agent is running', async () => {
    const r = await run(['agent', 'status', '--socket', join(env.dir, 'none.sock')]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /no agent is running/);
  });
});
