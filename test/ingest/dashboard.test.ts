/**
 * The dashboard in a real browser: Debian's Chromium, headless, driven by playwright-core over the
 * DevTools protocol, trusting only the ingest's certificate key (SPKI pin). It signs in with an API
 * token, shows the device list with each device's posture, draws vitals and ECG from the readings
 * API, follows the live feed as new messages are stored, loads nothing from anywhere but the
 * service, and leaves a screenshot in test-output/.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { SimulatedPatient } from '../../src/agent/sensors/simulated-patient.ts';
import type { VitalsBatch } from '../../src/codec/vitals.ts';
import { startIngestHttp, type IngestHttp } from '../../src/ingest/http/server.ts';
import { createApiToken } from '../../src/ingest/tokens.ts';
import { batchFor, startHarness, type Harness, type TestDevice } from './support/harness.ts';
import { serverCertificate, testIssuer } from './support/https.ts';

const OUT = fileURLToPath(new URL('../../test-output/', import.meta.url));

/** One second of a simulated patient per message, as the agent batches it. */
function patientBatches(deviceId: string, seed: number, start: number, seconds: number): VitalsBatch[] {
  const p = new SimulatedPatient({ id: deviceId, seed, nibpIntervalMs: 30_000 });
  p.start(start);
  const out: VitalsBatch[] = [];
  for (let s = 1; s <= seconds; s++) {
    const r = p.read(start + s * 1000);
    out.push({
      deviceId,
      readings: r.vitals.map((v) => ({ kind: v.name, time: v.time, value: v.value })),
      ecg: r.waveforms.map((w) => ({ start: w.start, intervalMs: w.intervalMs, samplesMv: w.samples })),
    });
  }
  return out;
}

describe('dashboard in headless Chromium', () => {
  let h: Harness;
  let http: IngestHttp;
  let browser: BrowserContext;
  let page: Page;
  let profile: string;
  let token: string;
  const devices: TestDevice[] = [];
  const requests: string[] = [];
  const problems: string[] = [];
  let base: number;

  before(async () => {
    h = await startHarness('sqlite', undefined, {}, { realTime: true });
    const server = await serverCertificate(h.pki);
    http = await startIngestHttp(h.core, { host: '127.0.0.1', port: 0, certPem: server.certPem, keyPem: server.keyPem, roots: [h.pki.root], issuer: testIssuer(h.pki) });
    token = (await createApiToken(h.core.storage, { name: 'ward-screen', role: 'reader', now: h.clock.now() })).token;
    base = h.clock.now() - 90_000;
    for (const id of ['icu-bed-1', 'icu-bed-2']) devices.push(await h.enrol(id, { alg: id.endsWith('1') ? 'chacha20-poly1305' : 'aes-ccm-16-64-128' }));
    for (const [i, d] of devices.entries()) {
      const batches = patientBatches(d.id, 7 + i, base, 60);
      for (const [k, b] of batches.entries()) await h.core.service?.accept({ payload: d.seal(k + 1, b), contentFormat: 96, peer: d.peer });
    }
    await h.core.registry.setStatus('icu-bed-2', 'suspended', 'test');
    // One refused message, so the posture shows a rejection.
    await h.core.service?.accept({ payload: (devices[1] as TestDevice).seal(61, batchFor('icu-bed-2', 61, base)), contentFormat: 96, peer: (devices[1] as TestDevice).peer });
    await h.core.service?.flushRejections();

    const spkiPin = createHash('sha256').update(server.cert.spki.der).digest('base64');
    profile = mkdtempSync(join(tmpdir(), 'vitalseal-chromium-'));
    browser = await chromium.launchPersistentContext(profile, {
      executablePath: process.env['CHROMIUM'] ?? '/usr/bin/chromium',
      headless: true,
      viewport: { width: 1280, height: 1100 },
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', `--ignore-certificate-errors-spki-list=${spkiPin}`],
    });
    page = browser.pages()[0] ?? (await browser.newPage());
    page.on('request', (r) => requests.push(r.url()));
    page.on('console', (m) => { if (m.type() === 'error') problems.push(m.text()); });
    page.on('pageerror', (e) => problems.push(e.message));
  });

  after(async () => {
    await browser?.close();
    await http?.close();
    await h?.close();
    if (profile !== undefined) rmSync(profile, { recursive: true, force: true });
  });

  it('asks for a token, then shows devices with their posture', async () => {
    const res = await page.goto(http.url);
    assert.equal(res?.status(), 200);
    assert.match(String(res?.headers()['strict-transport-security']), /max-age=/);
    await page.waitForSelector('#login:not([hidden])');
    await page.fill('#token', 'not-a-token');
    await page.click('#connect');
    assert.match(await page.textContent('#login-error') ?? '', /not an API token/);
    await page.fill('#token', token);
    await page.click('#connect');
    await page.waitForSelector('#devices tbody tr[data-device="icu-bed-1"]');
    const cells = async (id: string) => page.$$eval(`#devices tbody tr[data-device="${id}"] td`, (tds) => tds.map((td) => td.textContent ?? ''));
    const one = await cells('icu-bed-1');
    assert.equal(one[0], 'icu-bed-1');
    assert.equal(one[1], 'active');
    assert.equal(one[2], 'coaps');
    assert.match(one[3] as string, /DTLSv1\.3 .* \/ chacha20-poly1305/);
    assert.match(one[4] as string, /^\d+ (s|min)$/, 'key epoch age');
    assert.match(one[5] as string, /^\d{4}-\d{2}-\d{2} \(\d+ d\)$/, 'certificate expiry');
    assert.match(one[6] as string, /ago$/);
    const two = await cells('icu-bed-2');
    assert.equal(two[1], 'suspended');
    assert.match(two[3] as string, /aes-ccm-16-64-128/);
    assert.match(two[7] as string, /^1 \(device-suspended\)$/);
    assert.match(await page.textContent('#posture') ?? '', /self-test[\s\S]*checks passed/i);
  });

  it('draws vitals and ECG, and follows the live feed', async () => {
    // Polled from here through Playwright's selectors: page.waitForFunction re-evaluates its predicate
    // with eval, which the dashboard's CSP (script-src 'self') rightly refuses once it has to poll.
    const waitText = async (selector: string, ok: (text: string) => boolean, ms = 10_000) => {
      const end = Date.now() + ms;
      for (;;) {
        const text = (await page.textContent(selector)) ?? '';
        if (ok(text)) return;
        if (Date.now() > end) throw new Error(`${selector} still reads ${JSON.stringify(text)} after ${ms} ms`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    await waitText('#v-heart-rate', (t) => t !== '–');
    const rows = await h.core.storage.readMessages('icu-bed-1', 0, Number.MAX_SAFE_INTEGER);
    assert.equal(rows.length, 60);
    const hr = patientBatches('icu-bed-1', 7, base, 60).flatMap((b) => b.readings).filter((r) => r.kind === 'heart-rate').at(-1)?.value;
    assert.equal(await page.textContent('#v-heart-rate'), String(hr), 'the latest stored heart rate');
    await waitText('#conn', (t) => t === 'live');
    const d = devices[0] as TestDevice;
    // 61 % 40 + 60 = 81, outside the simulated patient's range: a value only the live feed brings.
    await h.core.service?.accept({ payload: d.seal(61, batchFor(d.id, 61, base)), contentFormat: 96, peer: d.peer });
    await waitText('#v-heart-rate', (t) => t === '81');
    // Back to the patient for the screenshot.
    const more = patientBatches('icu-bed-1', 7, base, 62);
    await h.core.service?.accept({ payload: d.seal(62, more[61]), contentFormat: 96, peer: d.peer });
    for (const id of ['c-heart-rate', 'c-spo2', 'c-ecg']) {
      const drawn = await page.evaluate(`(() => {
        const c = document.getElementById('${id}');
        const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let lit = 0;
        for (let i = 0; i < px.length; i += 4) if (px[i + 1] > 120) lit++;
        return lit;
      })()`) as number;
      assert.ok(drawn > 50, `${id} has a drawn trace (${drawn} bright pixels)`);
    }
  });

  it('loads nothing from elsewhere, reports no errors, and leaves a screenshot', async () => {
    const foreign = requests.filter((u) => !u.startsWith(http.url));
    assert.deepEqual(foreign, [], 'every request goes to the ingest service');
    assert.deepEqual(problems, [], 'no console errors or CSP violations');
    mkdirSync(OUT, { recursive: true });
    const file = join(OUT, 'ingest-dashboard.png');
    await page.screenshot({ path: file, fullPage: true });
    assert.ok(statSync(file).size > 10_000);
  });
});
