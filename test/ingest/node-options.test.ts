import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { INGEST_NODE_OPTIONS, missingNodeOptions } from '../../src/ingest/node-options.ts';

describe('ingest node options', () => {
  it('are V8 flags turning off allocation-site pretenuring and capping the young generation, and cannot be changed at run time', () => {
    assert.deepEqual([...INGEST_NODE_OPTIONS], ['--no-allocation-site-pretenuring', '--max-semi-space-size=8']);
    assert.throws(() => (INGEST_NODE_OPTIONS as string[]).push('--x'), TypeError);
  });

  it('names what a process was started without, in either of V8\'s spellings', () => {
    const pretenuring = ['--no-allocation-site-pretenuring'];
    assert.deepEqual(missingNodeOptions([], pretenuring), pretenuring);
    assert.deepEqual(missingNodeOptions(['--import', 'tsx'], pretenuring), pretenuring);
    assert.deepEqual(missingNodeOptions(['--allocation-site-pretenuring'], pretenuring), pretenuring, 'the opposite flag is not it');
    assert.deepEqual(missingNodeOptions(['--import', 'tsx', '--no-allocation-site-pretenuring'], pretenuring), []);
    assert.deepEqual(missingNodeOptions(['--no_allocation_site_pretenuring'], pretenuring), []);
    // V8 takes the last of a flag and its negation.
    assert.deepEqual(missingNodeOptions(['--no-allocation-site-pretenuring', '--allocation-site-pretenuring'], pretenuring), pretenuring);
    assert.deepEqual(missingNodeOptions(['--allocation-site-pretenuring', '--no-allocation-site-pretenuring'], pretenuring), []);
    assert.deepEqual(missingNodeOptions(['--a'], ['--a', '--b']), ['--b']);
  });

  it('counts a flag with a value as given with any value (the operator\'s choice), in either spelling', () => {
    assert.deepEqual(missingNodeOptions([]), [...INGEST_NODE_OPTIONS]);
    assert.deepEqual(missingNodeOptions(['--no-allocation-site-pretenuring']), ['--max-semi-space-size=8']);
    assert.deepEqual(missingNodeOptions(['--no-allocation-site-pretenuring', '--max-semi-space-size=8']), []);
    assert.deepEqual(missingNodeOptions(['--no-allocation-site-pretenuring', '--max_semi_space_size=4']), []);
    assert.deepEqual(missingNodeOptions(['--no-allocation-site-pretenuring', '--max-semi-space-size']), ['--max-semi-space-size=8'], 'a value is part of it');
    assert.deepEqual(missingNodeOptions(['--no-allocation-site-pretenuring', '--max-semi-space-size-x=8']), ['--max-semi-space-size=8'], 'another flag is not it');
  });

  it('are accepted by this node', async () => {
    const { spawnSync } = await import('node:child_process');
    const r = spawnSync(process.execPath, [...INGEST_NODE_OPTIONS, '-e', 'process.stdout.write(JSON.stringify(process.execArgv))'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(missingNodeOptions(JSON.parse(r.stdout) as string[]), []);
    assert.equal(r.stderr, '', 'no "bad option" warning');
  });
});
