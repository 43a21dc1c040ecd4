// The vitalseal ingest dashboard. Plain browser JavaScript, served by the ingest service itself.
// Data comes only from the API with the operator's token (sessionStorage, this tab only): the
// device list and posture (/api/v1/posture), recent readings (/api/v1/devices/{id}/readings, SenML
// JSON) and the live feed (/api/v1/live, server-sent events read through fetch so the token can be
// sent in a header). Every text value is set with textContent, never as HTML.
'use strict';

(function () {
  const VITALS = ['heart-rate', 'spo2', 'respiration-rate', 'body-temperature'];
  const RANGES = { 'heart-rate': [30, 180], spo2: [80, 100], 'respiration-rate': [0, 40], 'body-temperature': [34, 41] };
  const HISTORY_MS = 5 * 60 * 1000;
  const ECG_MS = 5000;
  const MMHG_IN_PA = 133.322387415;

  const state = {
    token: sessionStorage.getItem('vitalseal-token') || '',
    offset: 0, // server clock minus browser clock
    devices: [],
    selected: undefined,
    series: {},
    ecg: [],
    stream: undefined,
    dirty: true,
  };

  const $ = (id) => document.getElementById(id);

  function resetSeries() {
    state.series = {};
    for (const k of VITALS) state.series[k] = [];
    state.ecg = [];
  }
  resetSeries();

  function serverNow() {
    return Date.now() + state.offset;
  }

  async function api(path) {
    const res = await fetch(path, { headers: { authorization: `Bearer ${state.token}` }, cache: 'no-store' });
    if (res.status === 401) {
      showLogin('The token was refused.');
      throw new Error('unauthorized');
    }
    if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
    return res;
  }

  function showLogin(message) {
    sessionStorage.removeItem('vitalseal-token');
    state.token = '';
    $('main').hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = message || '';
    setConn(false, 'not connected');
  }

  function setConn(on, text) {
    const el = $('conn');
    el.textContent = text;
    el.className = `pill ${on ? 'on' : 'off'}`;
  }

  function fmtAge(ms) {
    if (ms === null || ms === undefined) return '–';
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 90) return `${s} s`;
    if (s < 5400) return `${Math.round(s / 60)} min`;
    if (s < 172800) return `${Math.round(s / 3600)} h`;
    return `${Math.round(s / 86400)} d`;
  }

  function fmtTime(t) {
    return t === null || t === undefined ? '–' : new Date(t).toISOString().replace('T', ' ').slice(0, 19);
  }

  function cell(tr, text, cls) {
    const td = document.createElement('td');
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function renderDevices() {
    const tbody = $('devices').querySelector('tbody');
    tbody.replaceChildren();
    const now = serverNow();
    for (const d of state.devices) {
      const tr = document.createElement('tr');
      tr.dataset.device = d.deviceId;
      if (d.deviceId === state.selected) tr.className = 'selected';
      cell(tr, d.deviceId);
      cell(tr, d.status, `status-${d.status}`);
      cell(tr, d.transport || '–');
      cell(tr, d.suite || '–');
      cell(tr, fmtAge(d.epochAgeMs), d.epochAgeMs > 86400000 ? 'warn' : '');
      const days = d.certExpiresInDays;
      cell(tr, d.certNotAfter === null ? '–' : `${fmtTime(d.certNotAfter).slice(0, 10)} (${days} d)`, days !== null && days < 30 ? (days < 7 ? 'bad' : 'warn') : '');
      cell(tr, d.lastSeenAt === null ? 'never' : `${fmtAge(now - d.lastSeenAt)} ago`);
      cell(tr, String(d.rejections) + (d.lastRejectionReason ? ` (${d.lastRejectionReason})` : ''), d.rejections > 0 ? 'warn' : '');
      tr.addEventListener('click', () => select(d.deviceId));
      tbody.appendChild(tr);
    }
  }

  function renderPosture(p) {
    const s = p.service;
    const dl = $('posture');
    dl.replaceChildren();
    const rows = [
      ['Storage', s.storage],
      ['Key store', `${s.keyStore.kind} (${s.keyStore.assurance}${s.keyStore.hardwareBound ? ', hardware-bound' : ''})`],
      ['KEK', s.kek],
      ['Static key', s.staticKey ? `v${s.staticKey.version}, kid ${s.staticKey.kid}, ${s.staticKey.ageDays} d old, ${s.staticKey.versionsHeld} held` : 'none'],
      ['Start-up self-test', `${s.selfTest.checks} checks passed in ${s.selfTest.durationMs} ms`],
      ['HTTPS', `${s.https.protocol}, HSTS max-age ${s.https.hstsMaxAge}, ${s.https.mtlsOperators} mTLS operator(s)`],
      ['Devices', `${s.devices.active} active, ${s.devices.suspended} suspended, ${s.devices.revoked} revoked`],
      ['Refused messages', String(s.rejected)],
      ['Alerts', String(s.alerts)],
    ];
    for (const [k, v] of rows) {
      const dt = document.createElement('dt');
      dt.textContent = k;
      const dd = document.createElement('dd');
      dd.textContent = v;
      dl.append(dt, dd);
    }
    $('service').textContent = `${s.storage} · ${s.keyStore.kind} key store · server time ${fmtTime(p.now)}`;
  }

  async function loadPosture() {
    const p = await (await api('/api/v1/posture')).json();
    state.offset = p.now - Date.now();
    state.devices = p.devices;
    if (state.selected === undefined && p.devices.length > 0) {
      const active = p.devices.find((d) => d.lastSeenAt !== null) || p.devices[0];
      await select(active.deviceId);
    }
    renderDevices();
    renderPosture(p);
  }

  function clinical(kind, unit, v) {
    if (unit === '/') return Math.round(v * 1000) / 10; // SpO2 ratio → %
    if (unit === 'Pa') return Math.round((v / MMHG_IN_PA) * 10) / 10;
    return v;
  }

  function addReading(kind, time, value) {
    const s = state.series[kind];
    if (!s) return;
    s.push({ t: time, v: value });
    if (s.length > 1 && s[s.length - 2].t > time) s.sort((a, b) => a.t - b.t);
    const cut = serverNow() - HISTORY_MS;
    while (s.length > 0 && s[0].t < cut) s.shift();
    $(`v-${kind}`).textContent = String(s[s.length - 1].v);
    state.dirty = true;
  }

  function addEcg(start, intervalMs, samplesMv) {
    for (let i = 0; i < samplesMv.length; i++) state.ecg.push({ t: start + i * intervalMs, v: samplesMv[i] });
    state.ecg.sort((a, b) => a.t - b.t);
    const last = state.ecg.length > 0 ? state.ecg[state.ecg.length - 1].t : 0;
    while (state.ecg.length > 0 && state.ecg[0].t < last - ECG_MS) state.ecg.shift();
    state.dirty = true;
  }

  function decodeVd(b64url) {
    const b64 = b64url.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((b64url.length + 3) % 4);
    const bin = atob(b64);
    const out = new Int16Array(bin.length / 2);
    for (let i = 0; i < out.length; i++) {
      const u = bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8);
      out[i] = u >= 0x8000 ? u - 0x10000 : u;
    }
    return out;
  }

  async function select(id) {
    state.selected = id;
    resetSeries();
    for (const k of VITALS) $(`v-${k}`).textContent = '–';
    $('chart-title').textContent = `Vitals · ${id}`;
    renderDevices();
    const now = serverNow();
    const records = await (await api(`/api/v1/devices/${encodeURIComponent(id)}/readings?from=${now - HISTORY_MS}&to=${now + 60000}&limit=2000`)).json();
    let interval = 0.004;
    let lsb = 1e-6;
    for (const r of records) {
      const kind = r.n.slice(id.length + 1);
      if (VITALS.includes(kind)) addReading(kind, r.t * 1000, clinical(kind, r.u, r.v));
      else if (kind === 'ecg/interval') interval = r.v;
      else if (kind === 'ecg/lsb') lsb = r.v;
      else if (kind === 'ecg') addEcg(r.t * 1000, interval * 1000, Array.from(decodeVd(r.vd), (x) => x * lsb * 1000));
    }
  }

  async function openStream() {
    const res = await api('/api/v1/live');
    setConn(true, 'live');
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let event = 'message';
        let data = '';
        for (const line of block.split('\n')) {
          if (line.startsWith('event: ')) event = line.slice(7);
          else if (line.startsWith('data: ')) data += line.slice(6);
        }
        if (event === 'reading') onReading(JSON.parse(data));
      }
    }
    setConn(false, 'reconnecting');
  }

  function onReading(m) {
    const d = state.devices.find((x) => x.deviceId === m.deviceId);
    if (d) {
      d.lastSeenAt = m.receivedAt;
      d.transport = m.transport;
    } else {
      loadPosture().catch(() => undefined);
    }
    if (m.deviceId !== state.selected) return;
    for (const r of m.readings) addReading(r.kind, r.time, r.value);
    for (const e of m.ecg) addEcg(e.start, e.intervalMs, e.samplesMv);
  }

  // A jump of more than `maxGap` ms between points is a gap in the data: the trace breaks there.
  function drawLine(canvas, points, t0, t1, lo, hi, color, maxGap) {
    const ctx = canvas.getContext('2d');
    const w = canvas.width;
    const h = canvas.height;
    ctx.clearRect(0, 0, w, h);
    ctx.strokeStyle = '#1d2936';
    ctx.lineWidth = 1;
    for (let g = 1; g < 4; g++) {
      ctx.beginPath();
      ctx.moveTo(0, (h * g) / 4);
      ctx.lineTo(w, (h * g) / 4);
      ctx.stroke();
    }
    if (points.length === 0) return;
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    points.forEach((p, i) => {
      const x = ((p.t - t0) / (t1 - t0)) * w;
      const y = h - ((Math.min(hi, Math.max(lo, p.v)) - lo) / (hi - lo)) * (h - 8) - 4;
      if (i === 0 || p.t - points[i - 1].t > maxGap) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }

  function draw() {
    if (state.dirty) {
      state.dirty = false;
      const colors = { 'heart-rate': '#3fb950', spo2: '#58a6ff', 'respiration-rate': '#d2a8ff', 'body-temperature': '#f0883e' };
      let latest = 0;
      for (const k of VITALS) for (const p of state.series[k]) latest = Math.max(latest, p.t);
      const t1 = Math.max(latest, serverNow()) + 1000;
      for (const k of VITALS) {
        const [lo, hi] = RANGES[k];
        drawLine($(`c-${k}`), state.series[k], t1 - HISTORY_MS, t1, lo, hi, colors[k], 30000);
      }
      const e1 = state.ecg.length > 0 ? state.ecg[state.ecg.length - 1].t : 0;
      drawLine($('c-ecg'), state.ecg, e1 - ECG_MS, e1, -1.5, 2, '#3fb950', 100);
    }
    requestAnimationFrame(draw);
  }

  async function run() {
    $('login').hidden = true;
    $('main').hidden = false;
    setConn(false, 'connecting');
    try {
      await loadPosture();
    } catch (e) {
      if (String(e.message) !== 'unauthorized') setConn(false, 'error');
      return;
    }
    setInterval(() => loadPosture().catch(() => undefined), 10000);
    setInterval(renderDevices, 1000);
    for (;;) {
      try {
        await openStream();
      } catch (e) {
        if (String(e.message) === 'unauthorized') return;
        setConn(false, 'reconnecting');
      }
      await new Promise((r) => setTimeout(r, 2000));
    }
  }

  $('login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const t = $('token').value.trim();
    if (!/^vst_[A-Za-z0-9_-]{43}$/.test(t)) {
      $('login-error').textContent = 'That is not an API token (vst_…).';
      return;
    }
    state.token = t;
    sessionStorage.setItem('vitalseal-token', t);
    run();
  });

  requestAnimationFrame(draw);
  if (state.token) run();
  else showLogin('');
})();
