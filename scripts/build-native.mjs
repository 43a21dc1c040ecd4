#!/usr/bin/env node
/**
 * Builds the record_cipher addon (src/crypto/libcrypto/addon: one native call per AEAD message on
 * Node's own OpenSSL) with npm's node-gyp against the running Node's headers. Run by scripts/setup;
 * safe to re-run: it rebuilds only when the C source, binding.gyp or the Node binary changed.
 *
 * Never fatal: without the addon the same contexts run through koffi, a few times slower per
 * message, and `keyedContextStatus()` says why. A failed build prints its reason and the last lines
 * of the compiler's output.
 *
 * Usage: node scripts/build-native.mjs [--force]
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dir = join(root, 'src/crypto/libcrypto/addon');
const built = join(dir, 'build/Release/record_cipher.node');
const stampFile = join(dir, 'build/.vitalseal-stamp');

function say(line) {
  console.log(`setup: ${line}`);
}

/** npm's own node-gyp: npm hands its path to scripts it runs; otherwise it sits beside npm-cli.js. */
function nodeGyp() {
  const candidates = [
    process.env.npm_config_node_gyp,
    process.env.npm_execpath && join(dirname(process.env.npm_execpath), '../node_modules/node-gyp/bin/node-gyp.js'),
    join(dirname(process.execPath), '../lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js'),
  ];
  return candidates.find((p) => p !== undefined && p !== '' && existsSync(p));
}

/** The headers of the Node that runs this (there is no network to fetch them from). */
function nodeDir() {
  const candidates = [process.env.npm_config_nodedir, join(dirname(process.execPath), '..')];
  return candidates.find((d) => d !== undefined && d !== '' && existsSync(join(d, 'include/node/node_api.h')) && existsSync(join(d, 'include/node/openssl/evp.h')));
}

const stamp = createHash('sha256')
  .update(readFileSync(join(dir, 'record_cipher.c')))
  .update(readFileSync(join(dir, 'binding.gyp')))
  .update(`${process.execPath} ${process.version} ${process.versions.openssl} ${process.arch}`)
  .digest('hex');

if (!process.argv.includes('--force') && existsSync(built) && existsSync(stampFile) && readFileSync(stampFile, 'utf8') === stamp) {
  process.exit(0);
}

const gyp = nodeGyp();
const headers = nodeDir();
if (gyp === undefined || headers === undefined) {
  say(`record_cipher addon not built: ${gyp === undefined ? "npm's node-gyp was not found" : "this Node's headers (include/node with openssl/) were not found"}; keyed AEAD contexts use koffi`);
  process.exit(0);
}
say('building the record_cipher addon (node-gyp)');
rmSync(stampFile, { force: true });
const r = spawnSync(process.execPath, [gyp, 'rebuild', `--nodedir=${headers}`, '--loglevel=error'], { cwd: dir, encoding: 'utf8' });
if (r.status !== 0 || !existsSync(built)) {
  const tail = `${r.stdout ?? ''}${r.stderr ?? ''}`.trim().split('\n').slice(-8).join('\n');
  say(`record_cipher addon not built (node-gyp exited ${r.status ?? r.signal}); keyed AEAD contexts use koffi`);
  if (tail !== '') console.log(tail);
  process.exit(0);
}
writeFileSync(stampFile, stamp);
say('record_cipher addon built');
