// Pier web UI: plain JavaScript, no framework, no build step. It talks to the management
// API under /api with HTTP basic auth; the credentials live in this tab's sessionStorage.
'use strict';
(function () {
  const REFRESH_MS = 5000;
  const HISTORY_POINTS = 180; // 15 minutes of 5 s samples per chart
  const AUTH_KEY = 'pier.auth';
  const USER_KEY = 'pier.user';

  // ---------------------------------------------------------------- DOM helpers

  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v == null || v === false) continue;
        if (k === 'class') el.className = v;
        else if (k === 'text') el.textContent = v;
        else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
        else if (k === 'checked' || k === 'selected' || k === 'value') el[k] = v;
        else el.setAttribute(k, v === true ? '' : String(v));
      }
    }
    append(el, kids);
    return el;
  }
  function append(el, ...kids) {
    for (const k of kids.flat(Infinity)) {
      if (k == null || k === false) continue;
      el.appendChild(k instanceof Node ? k : document.createTextNode(String(k)));
    }
    return el;
  }
  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
    return el;
  }
  function fill(el, ...kids) {
    return append(clear(el), kids);
  }
  const $ = (sel) => document.querySelector(sel);
  const enc = encodeURIComponent;

  // ---------------------------------------------------------------- formatting

  function fmtInt(n) {
    if (n == null || !isFinite(n)) return '–';
    return Math.round(n).toLocaleString('en-US');
  }
  function fmtNum(x, digits) {
    if (x == null || !isFinite(x)) return '–';
    const a = Math.abs(x);
    if (a >= 1e6) return (x / 1e6).toFixed(1) + 'M';
    if (a >= 1e4) return (x / 1e3).toFixed(1) + 'k';
    if (a >= 100) return Math.round(x).toLocaleString('en-US');
    const d = digits == null ? (a >= 10 ? 1 : 2) : digits;
    return x.toFixed(d);
  }
  // Message counts: whole numbers as such, fractions (axis ticks) with a decimal.
  function fmtCount(x) {
    return Number.isInteger(x) ? fmtInt(x) : fmtNum(x);
  }
  function fmtRate(x) {
    return x == null || !isFinite(x) ? '–' : fmtNum(x, x >= 10 ? 1 : 2) + '/s';
  }
  function fmtSecs(s) {
    if (s == null || !isFinite(s)) return '–';
    if (s === 0) return '0 s';
    if (s < 0.001) return (s * 1e6).toFixed(0) + ' µs';
    if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 0) + ' ms';
    if (s < 120) return s.toFixed(s < 10 ? 2 : 1) + ' s';
    if (s < 7200) return (s / 60).toFixed(1) + ' min';
    return (s / 3600).toFixed(1) + ' h';
  }
  function fmtBytes(b) {
    if (b == null || !isFinite(b)) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
    return (i === 0 ? b : b.toFixed(1)) + ' ' + units[i];
  }
  function fmtUptime(ms) {
    if (ms == null) return '–';
    let s = Math.floor(ms / 1000);
    const d = Math.floor(s / 86400); s -= d * 86400;
    const hh = Math.floor(s / 3600); s -= hh * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    if (d) return d + 'd ' + hh + 'h';
    if (hh) return hh + 'h ' + m + 'm';
    if (m) return m + 'm ' + s + 's';
    return s + 's';
  }
  function fmtClock(t) {
    const d = new Date(t);
    const p = (n) => String(n).padStart(2, '0');
    return p(d.getHours()) + ':' + p(d.getMinutes()) + ':' + p(d.getSeconds());
  }
  function fmtJson(v) {
    if (v == null) return '';
    if (typeof v === 'object' && Object.keys(v).length === 0) return '';
    return JSON.stringify(v);
  }
  function vhostLabel(v) {
    return v;
  }
  function exchangeLabel(name) {
    return name === '' ? '(AMQP default)' : name;
  }
  function exchangeUrlName(name) {
    return name === '' ? 'amq.default' : name;
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, reason) {
      super(reason);
      this.status = status;
    }
  }

  function token() {
    return sessionStorage.getItem(AUTH_KEY);
  }

  async function api(method, path, body, headers) {
    // X-Requested-With: the broker then answers 401 without a challenge, so the browser
    // does not open its own login dialog.
    const hdrs = Object.assign({ Authorization: 'Basic ' + (token() || ''), 'X-Requested-With': 'XMLHttpRequest' }, headers || {});
    const opts = { method, headers: hdrs, cache: 'no-store' };
    if (body !== undefined) {
      hdrs['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch('/api' + path, opts);
    } catch (e) {
      throw new ApiError(0, 'cannot reach the broker (' + e.message + ')');
    }
    const text = await resp.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (_) { data = text; }
    }
    if (!resp.ok) {
      let reason = resp.statusText || 'HTTP ' + resp.status;
      if (data && typeof data === 'object' && data.reason != null) {
        reason = typeof data.reason === 'string' ? data.reason : JSON.stringify(data.reason);
      } else if (typeof data === 'string' && data) {
        reason = data;
      }
      // 401 "not_authorised" is a known user lacking a tag or permission: say so in
      // place. Any other 401 means the credentials no longer work: back to the login.
      if (resp.status === 401 && !(data && data.error === 'not_authorised')) {
        logout(reason && reason !== 'Unauthorized' ? reason : 'Please log in again.');
      }
      throw new ApiError(resp.status, reason);
    }
    return data;
  }
  const get = (path) => api('GET', path);

  // ---------------------------------------------------------------- history and charts

  const histories = new Map();

  function record(key, values) {
    let hist = histories.get(key);
    if (!hist) {
      hist = { t: [], v: {} };
      histories.set(key, hist);
    }
    const now = Date.now();
    // The queue list and the queue page both record: keep one point per refresh.
    if (hist.t.length && now - hist.t[hist.t.length - 1] < 1000) {
      hist.t.pop();
      for (const k of Object.keys(hist.v)) hist.v[k].pop();
    }
    const n = hist.t.length;
    hist.t.push(now);
    for (const [k, v] of Object.entries(values)) {
      if (!hist.v[k]) hist.v[k] = new Array(n).fill(null);
      hist.v[k].push(v == null || !isFinite(v) ? null : v);
    }
    for (const k of Object.keys(hist.v)) {
      if (hist.v[k].length < hist.t.length) hist.v[k].push(null);
    }
    if (hist.t.length > HISTORY_POINTS) {
      hist.t.shift();
      for (const k of Object.keys(hist.v)) hist.v[k].shift();
    }
    return hist;
  }

  // The smallest 1, 2, (2.5,) 5 × 10^k at least v.
  function niceCeil(v, integer) {
    if (!(v > 0)) return 0;
    const e = Math.pow(10, Math.floor(Math.log10(v)));
    const f = v / e;
    const nf = f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 && !integer ? 2.5 : f <= 5 ? 5 : 10;
    return Math.max(nf * e, integer ? 1 : 0);
  }

  // A line chart on a <canvas>: series = [{key, label, color, dash}], fmt formats values.
  function chartBox(title, series, fmt, id) {
    const canvas = h('canvas', { id: id || null, role: 'img', 'aria-label': title });
    const el = h('div', { class: 'chart' }, h('h3', null, title), canvas);
    return { el, draw: (hist) => drawChart(canvas, hist, series, fmt) };
  }

  function drawChart(canvas, hist, series, fmt) {
    const integer = fmt === fmtCount;
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 400;
    const ht = canvas.clientHeight || 190;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(ht * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(ht * dpr);
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, ht);
    const padL = 58, padR = 12, padT = 24, padB = 20;
    const pw = w - padL - padR, ph = ht - padT - padB;
    const t = hist ? hist.t : [];
    const n = t.length;
    ctx.font = '11px system-ui, sans-serif';
    ctx.textBaseline = 'middle';

    // Legend with the latest values.
    let x = padL;
    for (const s of series) {
      const vals = (hist && hist.v[s.key]) || [];
      const last = vals.length ? vals[vals.length - 1] : null;
      ctx.fillStyle = s.color;
      ctx.fillRect(x, 8, 10, s.dash ? 3 : 10);
      ctx.fillStyle = '#1d2430';
      const text = s.label + ' ' + (last == null ? '–' : fmt(last));
      ctx.textAlign = 'left';
      ctx.fillText(text, x + 14, 13);
      x += 14 + ctx.measureText(text).width + 16;
    }

    let max = 0;
    for (const s of series) {
      for (const v of (hist && hist.v[s.key]) || []) if (v != null && v > max) max = v;
    }
    // Up to 4 grid steps of a round size (whole numbers for counts).
    const step = max > 0 ? niceCeil(max / 4, integer) : integer ? 1 : 0.25;
    const steps = max > 0 ? Math.max(1, Math.ceil(max / step - 1e-9)) : 4;
    const top = step * steps;
    ctx.strokeStyle = '#e6ebf0';
    ctx.lineWidth = 1;
    ctx.fillStyle = '#667085';
    ctx.textAlign = 'right';
    for (let i = 0; i <= steps; i++) {
      const y = Math.round(padT + ph - (ph * i) / steps) + 0.5;
      ctx.beginPath();
      ctx.moveTo(padL, y);
      ctx.lineTo(padL + pw, y);
      ctx.stroke();
      ctx.fillText(fmt(step * i), padL - 6, y);
    }
    if (n < 2) {
      ctx.textAlign = 'center';
      ctx.fillText(n ? 'collecting data… (one point every 5 s)' : 'waiting for data…', padL + pw / 2, padT + ph / 2);
      return;
    }
    const t1 = t[n - 1];
    const span = Math.max(t1 - t[0], 60000);
    const X = (tt) => padL + pw - ((t1 - tt) / span) * pw;
    const Y = (v) => padT + ph - (Math.min(v, top) / top) * ph;
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    for (const f of [0, 0.5, 1]) {
      const tt = t1 - span * (1 - f);
      const xx = X(tt);
      ctx.fillText(fmtClock(tt), Math.min(Math.max(xx, padL + 22), padL + pw - 22), padT + ph + 5);
    }
    for (const s of series) {
      const vals = (hist && hist.v[s.key]) || [];
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 1.8;
      ctx.setLineDash(s.dash ? [5, 4] : []);
      ctx.beginPath();
      let pen = false;
      for (let i = 0; i < n; i++) {
        const v = vals[i];
        if (v == null) { pen = false; continue; }
        if (pen) ctx.lineTo(X(t[i]), Y(v));
        else ctx.moveTo(X(t[i]), Y(v));
        pen = true;
      }
      ctx.stroke();
    }
    ctx.setLineDash([]);
  }

  const COLORS = {
    blue: '#2e75b6', green: '#1a7f37', orange: '#d9822b', red: '#c62828', purple: '#7b4fa0', grey: '#8a94a6',
  };

  // ---------------------------------------------------------------- queueing figures

  function queueing(q) {
    return q.pier_queueing || {};
  }

  // ρ above this is a queue that grows (a little slack for the sampling noise of λ and μ).
  const GROWING = 1.05;

  // What the queueing figures say, in a word (and a sentence as the tooltip). μ is measured
  // (acknowledgements per second), so a queue whose consumers keep up has μ = λ and ρ = 1;
  // ρ clearly above 1 is a queue that grows, ρ below 1 one that drains a backlog.
  function health(f) {
    const lam = f.arrival_rate || 0, mu = f.service_rate || 0, len = f.length || 0;
    if (lam === 0 && mu === 0) {
      if (len > 0) return { cls: 'warn', text: 'backlog', title: 'Messages wait and nothing consumes them.' };
      return { cls: '', text: 'idle', title: 'Nothing arrives and nothing waits.' };
    }
    if (mu === 0) return { cls: 'bad', text: 'not served', title: 'Messages arrive but none are acknowledged: the queue can only grow.' };
    const rho = lam / mu;
    if (rho > GROWING) return { cls: 'bad', text: 'falling behind', title: 'ρ > 1: messages arrive faster than they are acknowledged, so the queue grows.' };
    if (rho < 1 / GROWING && len > 0) return { cls: 'ok', text: 'draining', title: 'ρ < 1: consumers acknowledge faster than messages arrive; the backlog shrinks.' };
    return { cls: 'ok', text: 'keeping up', title: 'Consumers acknowledge messages as fast as they arrive (ρ ≈ 1, as measured μ follows λ).' };
  }

  function badge(text, cls, title) {
    return h('span', { class: 'badge ' + (cls || ''), title: title || null }, text);
  }
  function healthBadge(f) {
    const s = health(f);
    return badge(s.text, s.cls, s.title);
  }

  // Time in queue measured per message (enqueue to ack) over the broker's window.
  function measured(f) {
    return f.measured_time_in_queue || {};
  }

  function recordQueue(vhost, q) {
    const f = queueing(q);
    const mm1 = f.mm1_predicted_length;
    const m = measured(f);
    return record('queue|' + vhost + '|' + q.name, {
      arrival: f.arrival_rate,
      service: f.service_rate,
      deliver: q.message_stats && q.message_stats.deliver_get_details ? q.message_stats.deliver_get_details.rate : null,
      ready: q.messages_ready,
      unacked: q.messages_unacknowledged,
      length: f.length,
      mm1_length: mm1,
      wait: f.time_in_queue_seconds,
      mm1_wait: f.mm1_predicted_time_in_queue_seconds,
      wait_p50: m.p50_seconds,
      wait_p99: m.p99_seconds,
    });
  }

  // ---------------------------------------------------------------- small widgets

  function table(headers, rows, emptyText) {
    const thead = h('thead');
    if (headers.groups) {
      thead.appendChild(h('tr', null, headers.groups.map((g) => h('th', { colspan: g[1], class: g[0] ? 'group' : null }, g[0]))));
    }
    thead.appendChild(h('tr', null, headers.cols.map((c) => {
      const [label, cls, title] = Array.isArray(c) ? c : [c];
      return h('th', { class: cls || null, title: title || null }, label);
    })));
    const tbody = h('tbody');
    if (!rows.length) {
      tbody.appendChild(h('tr', null, h('td', { colspan: headers.cols.length, class: 'empty' }, emptyText || 'Nothing to show.')));
    }
    for (const r of rows) tbody.appendChild(r);
    return h('table', { class: 'list' }, thead, tbody);
  }
  const td = (content, cls, title) => h('td', { class: cls || null, title: title || null }, content);
  const num = (content, title) => td(content, 'num', title);

  function card(label, value, hint, cls, id) {
    return h('div', { class: 'card ' + (cls || ''), id: id || null },
      h('div', { class: 'label' }, label), h('div', { class: 'value' }, value), hint ? h('div', { class: 'hint' }, hint) : null);
  }

  function flash(box, ok, text) {
    fill(box, h('div', { class: 'flash ' + (ok ? 'ok' : 'error'), role: 'status' }, text));
  }

  function field(label, input) {
    return h('label', null, h('span', { class: 'lbl' }, label), input);
  }
  function check(label, id, checked) {
    return h('label', { class: 'check' }, h('input', { type: 'checkbox', id, checked: !!checked }), label);
  }

  function parseJsonField(text, what) {
    const s = (text || '').trim();
    if (!s) return {};
    let v;
    try { v = JSON.parse(s); } catch (e) { throw new Error(what + ' is not valid JSON: ' + e.message); }
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error(what + ' must be a JSON object');
    return v;
  }

  // Typed value from a text box: numbers and booleans as such, the rest as strings.
  function typedValue(s) {
    const t = s.trim();
    if (/^-?\d+$/.test(t)) return parseInt(t, 10);
    if (/^-?\d+\.\d+$/.test(t)) return parseFloat(t);
    if (t === 'true') return true;
    if (t === 'false') return false;
    return s;
  }

  function vhostSelect(id, vhosts, withAll, selected) {
    const sel = h('select', { id });
    if (withAll) sel.appendChild(h('option', { value: '' }, 'All virtual hosts'));
    for (const v of vhosts) sel.appendChild(h('option', { value: v.name, selected: v.name === selected }, vhostLabel(v.name)));
    return sel;
  }

  async function listVhosts() {
    try {
      return await get('/vhosts?columns=name');
    } catch (e) {
      return [{ name: '/' }];
    }
  }

  // Buttons run an async action, report success or failure in `box`, then refresh.
  function action(box, fn) {
    return async (ev) => {
      if (ev) ev.preventDefault();
      try {
        const msg = await fn();
        if (msg) flash(box, true, msg);
        tick();
      } catch (e) {
        flash(box, false, e.message || String(e));
      }
    };
  }

  // ---------------------------------------------------------------- message forms

  function publishForm(prefix, opts) {
    // opts: {vhost, exchange, routingKey (fixed or null)}
    const out = h('div', { class: 'result', id: prefix + '-result' });
    const rk = h('input', { id: prefix + '-routing-key', value: opts.routingKey || '', placeholder: 'routing key' });
    if (opts.fixedKey) rk.disabled = true;
    const mode = h('select', { id: prefix + '-delivery-mode' },
      h('option', { value: '1' }, '1 - non-persistent'), h('option', { value: '2' }, '2 - persistent'));
    const headers = h('input', { id: prefix + '-headers', placeholder: '{"key": "value"}', size: 28 });
    const props = h('input', { id: prefix + '-properties', placeholder: '{"content_type": "text/plain"}', size: 28 });
    const payload = h('textarea', { id: prefix + '-payload', placeholder: 'message body' });
    const form = h('form', { class: 'stack', id: prefix + '-form' },
      h('div', { class: 'row' }, field('Routing key', rk), field('Delivery mode', mode), field('Headers (JSON)', headers), field('Properties (JSON)', props)),
      field('Payload', payload),
      h('button', { type: 'submit', id: prefix + '-submit' }, 'Publish message'), out);
    form.addEventListener('submit', action(out, async () => {
      const properties = parseJsonField(props.value, 'Properties');
      const hdrs = parseJsonField(headers.value, 'Headers');
      if (Object.keys(hdrs).length) properties.headers = hdrs;
      properties.delivery_mode = parseInt(mode.value, 10);
      const r = await api('POST', '/exchanges/' + enc(opts.vhost) + '/' + enc(exchangeUrlName(opts.exchange)) + '/publish', {
        properties, routing_key: rk.value, payload: payload.value, payload_encoding: 'string',
      });
      return r && r.routed ? 'Message published.' : 'Message published, but not routed to any queue.';
    }));
    return form;
  }

  function getForm(vhost, name) {
    const out = h('div', { class: 'result', id: 'get-result' });
    const ackmode = h('select', { id: 'get-ackmode' },
      h('option', { value: 'ack_requeue_true' }, 'Nack message requeue true'),
      h('option', { value: 'ack_requeue_false' }, 'Automatic ack'),
      h('option', { value: 'reject_requeue_true' }, 'Reject requeue true'),
      h('option', { value: 'reject_requeue_false' }, 'Reject requeue false'));
    const encoding = h('select', { id: 'get-encoding' },
      h('option', { value: 'auto' }, 'Automatic string/base64'), h('option', { value: 'base64' }, 'base64'));
    const count = h('input', { id: 'get-count', type: 'number', min: '1', value: '1', size: 4 });
    const form = h('form', { class: 'stack', id: 'get-form' },
      h('div', { class: 'row' }, field('Ack mode', ackmode), field('Encoding', encoding), field('Messages', count)),
      h('button', { type: 'submit', id: 'get-submit' }, 'Get message(s)'), out);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        const msgs = await api('POST', '/queues/' + enc(vhost) + '/' + enc(name) + '/get', {
          count: Math.max(1, parseInt(count.value, 10) || 1), ackmode: ackmode.value, encoding: encoding.value, truncate: 50000,
        });
        if (!msgs.length) {
          fill(out, h('div', { class: 'flash error', role: 'status' }, 'Queue is empty'));
        } else {
          fill(out, msgs.map((m, i) => h('div', { class: 'msg get-message' },
            h('strong', null, 'Message ' + (i + 1)),
            h('span', { class: 'muted' }, ' · ' + m.message_count + ' message' + (m.message_count === 1 ? '' : 's') + ' remaining in the queue'),
            h('table', { class: 'kv' },
              h('tr', null, h('th', null, 'Exchange'), h('td', null, exchangeLabel(m.exchange))),
              h('tr', null, h('th', null, 'Routing key'), h('td', null, m.routing_key)),
              h('tr', null, h('th', null, 'Redelivered'), h('td', null, String(m.redelivered))),
              h('tr', null, h('th', null, 'Properties'), h('td', { class: 'mono' }, fmtJson(m.properties))),
              h('tr', null, h('th', null, 'Payload'), h('td', null, m.payload_bytes + ' bytes, encoding: ' + m.payload_encoding))),
            h('pre', { class: 'payload' }, m.payload))));
        }
        tick();
      } catch (e) {
        flash(out, false, e.message);
      }
    });
    return form;
  }

  // ---------------------------------------------------------------- pages

  function overviewPage(main) {
    const title = h('span', { class: 'sub' });
    const cards = h('div', { class: 'cards', id: 'overview-totals' });
    const rates = chartBox('Message rates (per second, over each 5 s)', [
      { key: 'publish', label: 'publish', color: COLORS.blue },
      { key: 'deliver', label: 'deliver/get', color: COLORS.green },
      { key: 'ack', label: 'ack', color: COLORS.orange },
    ], fmtNum, 'chart-overview-rates');
    const queued = chartBox('Queued messages', [
      { key: 'total', label: 'total', color: COLORS.grey },
      { key: 'ready', label: 'ready', color: COLORS.blue },
      { key: 'unacked', label: 'unacked', color: COLORS.orange },
    ], fmtCount, 'chart-overview-queued');
    const watch = h('div', { id: 'overview-watch' });
    const node = h('div', { class: 'panel', id: 'overview-node' });
    // A cluster's members (shown when there is more than this node).
    const members = h('div', { id: 'overview-nodes' });
    append(main, h('h1', null, 'Overview', title), cards, h('div', { class: 'charts' }, rates.el, queued.el),
      h('h2', null, 'Queues to watch'),
      h('p', { class: 'explain' }, 'λ: messages arriving per second; μ: messages served (acknowledged) per second; ρ = λ/μ: above 1 the queue grows, below 1 it drains, about 1 when consumers keep up; L: messages in the queue; W: time a message spends in the queue (Little\'s law, L/λ); L̂ and Ŵ: what an M/M/1 queue would show at this ρ (only below 1). Rates are averaged over the last minute.'),
      watch, h('h2', null, 'Node'), node, members);
    let prev = null;
    return {
      async refresh() {
        const [ov, nodes, queues] = await Promise.all([
          get('/overview'),
          get('/nodes').catch(() => null),
          get('/queues?columns=name,vhost,messages,messages_ready,messages_unacknowledged,consumers,pier_queueing,message_stats').catch(() => []),
        ]);
        const ms = ov.message_stats || {};
        const qt = ov.queue_totals || {};
        const ot = ov.object_totals || {};
        const now = Date.now();
        const cur = { t: now, publish: ms.publish || 0, deliver: ms.deliver_get || 0, ack: ms.ack || 0 };
        // Until there are two samples, the broker's own one-minute publish rate.
        const r = { publish: ms.publish_details ? ms.publish_details.rate : null, deliver: null, ack: null };
        if (prev && now > prev.t) {
          const dt = (now - prev.t) / 1000;
          for (const k of ['publish', 'deliver', 'ack']) r[k] = Math.max(0, (cur[k] - prev[k]) / dt);
        }
        prev = cur;
        const hist = record('overview', Object.assign({}, r, {
          total: qt.messages, ready: qt.messages_ready, unacked: qt.messages_unacknowledged,
        }));
        rates.draw(hist);
        queued.draw(hist);
        fill(title, ov.cluster_name ? 'cluster ' + ov.cluster_name : '');
        fill(cards,
          card('Connections', fmtInt(ot.connections), null, null, 'total-connections'),
          card('Channels', fmtInt(ot.channels)),
          card('Queues', fmtInt(ot.queues), null, null, 'total-queues'),
          card('Exchanges', fmtInt(ot.exchanges)),
          card('Consumers', fmtInt(ot.consumers)),
          card('Messages', fmtInt(qt.messages), fmtInt(qt.messages_ready) + ' ready · ' + fmtInt(qt.messages_unacknowledged) + ' unacked'),
          card('Publish rate', fmtRate(r.publish), 'deliver ' + fmtRate(r.deliver) + ' · ack ' + fmtRate(r.ack)));
        const ranked = queues.slice().sort((a, b) => {
          const fa = queueing(a), fb = queueing(b);
          return (fb.utilisation || 0) - (fa.utilisation || 0) || (fb.length || 0) - (fa.length || 0);
        }).slice(0, 8);
        for (const q of queues) recordQueue(q.vhost, q);
        fill(watch, table({ cols: ['Virtual host', 'Queue', ['L', 'num', 'messages in the queue'], ['λ', 'num', 'arrivals per second'], ['μ', 'num', 'acks per second'], ['ρ', 'num', 'utilisation λ/μ'], ['W', 'num', 'time in queue, L/λ'], 'State'] },
          ranked.map((q) => {
            const f = queueing(q);
            return h('tr', null, td(q.vhost), td(h('a', { href: '#/queues/' + enc(q.vhost) + '/' + enc(q.name) }, q.name)),
              num(fmtInt(f.length)), num(fmtRate(f.arrival_rate)), num(fmtRate(f.service_rate)),
              num(fmtNum(f.utilisation)), num(fmtSecs(f.time_in_queue_seconds)), td(healthBadge(f)));
          }), 'No queues yet.'));
        const n = nodes && nodes[0];
        const listeners = (ov.listeners || []).map((l) => l.protocol + ' ' + l.ip_address + ':' + l.port).join(', ');
        fill(node, h('table', { class: 'kv' },
          h('tr', null, h('th', null, 'Node'), h('td', { id: 'node-name-cell' }, ov.node)),
          h('tr', null, h('th', null, 'Version'), h('td', null, (ov.product_name || 'Pier') + ' ' + (ov.product_version || '') + ' (RabbitMQ management API ' + ov.management_version + ')')),
          n ? [
            h('tr', null, h('th', null, 'Uptime'), h('td', null, fmtUptime(n.uptime))),
            h('tr', null, h('th', null, 'Memory'), h('td', null, fmtBytes(n.mem_used))),
            h('tr', null, h('th', null, 'File descriptors'), h('td', null, fmtInt(n.fd_used) + ' of ' + fmtInt(n.fd_total))),
            h('tr', null, h('th', null, 'Processors'), h('td', null, fmtInt(n.processors))),
            h('tr', null, h('th', null, 'Process id'), h('td', null, n.os_pid)),
          ] : null,
          h('tr', null, h('th', null, 'Listeners'), h('td', null, listeners))));
        fill(members, nodes && nodes.length > 1 ? [
          h('h2', null, 'Cluster nodes'),
          table({ cols: ['Node', 'State', ['Uptime', 'num'], ['Memory', 'num'], 'Alarms', 'Cannot reach'] },
            nodes.map((m) => h('tr', { 'data-node': m.name }, td(m.name),
              td(m.running ? 'running' : 'not running'),
              num(m.running ? fmtUptime(m.uptime) : ''), num(m.running ? fmtBytes(m.mem_used) : ''),
              td([m.mem_alarm ? 'memory' : null, m.disk_free_alarm ? 'disk' : null].filter(Boolean).join(', ') || (m.running ? 'none' : '')),
              td((m.partitions || []).join(', ') || (m.running ? 'none' : '')))),
            'No nodes.'),
        ] : null);
      },
    };
  }

  async function queuesPage(main) {
    const vhosts = await listVhosts();
    const vsel = vhostSelect('queues-vhost', vhosts, true, '');
    const filter = h('input', { id: 'queues-filter', placeholder: 'Filter by name' });
    const count = h('span', { class: 'muted' });
    const list = h('div', { id: 'queues-list' });
    const out = h('div', { class: 'result', id: 'queue-add-result' });
    const name = h('input', { id: 'queue-add-name', required: true });
    const qtype = h('select', { id: 'queue-add-type' }, h('option', { value: 'classic' }, 'Classic'));
    const args = h('textarea', { id: 'queue-add-arguments', placeholder: '{"x-max-length": 10000, "x-message-ttl": 60000}' });
    const addVhost = vhostSelect('queue-add-vhost', vhosts, false, '/');
    const form = h('form', { class: 'stack', id: 'queue-add-form' },
      h('div', { class: 'row' }, field('Virtual host', addVhost), field('Type', qtype), field('Name', name)),
      h('div', null, check('Durable', 'queue-add-durable', true), check('Auto delete', 'queue-add-auto-delete', false)),
      field('Arguments (JSON)', args),
      h('button', { type: 'submit', id: 'queue-add-submit' }, 'Add queue'), out);
    form.addEventListener('submit', action(out, async () => {
      const arguments_ = parseJsonField(args.value, 'Arguments');
      const n = name.value.trim();
      if (!n) throw new Error('The queue needs a name.');
      await api('PUT', '/queues/' + enc(addVhost.value) + '/' + enc(n), {
        durable: $('#queue-add-durable').checked, auto_delete: $('#queue-add-auto-delete').checked, arguments: arguments_,
      });
      name.value = '';
      return 'Queue ' + n + ' declared.';
    }));
    append(main, h('h1', null, 'Queues'),
      h('div', { class: 'toolbar' }, vsel, filter, count),
      list,
      h('details', { class: 'section', open: true }, h('summary', null, 'Add a new queue'), form));
    let last = [];
    function render() {
      const f = filter.value.trim().toLowerCase();
      const rows = last.filter((q) => !f || q.name.toLowerCase().includes(f));
      fill(count, rows.length + ' of ' + last.length + ' queue' + (last.length === 1 ? '' : 's'));
      const many = !vsel.value;
      // A cluster: each queue's home node.
      const clustered = new Set(last.map((q) => q.node)).size > 1;
      fill(list, table({
        groups: [['', (many ? 3 : 2) + (clustered ? 1 : 0)], ['Messages', 3], ['', 1], ['Rates (1 min)', 2], ['Queueing (now and M/M/1 prediction)', 7]],
        cols: [many ? 'Virtual host' : null, 'Name', clustered ? 'Node' : null, 'Features', ['Ready', 'num'], ['Unacked', 'num'], ['Total', 'num'], ['Consumers', 'num'],
          ['λ in', 'num', 'arrival rate: messages per second entering the queue'], ['μ out', 'num', 'service rate: messages acknowledged (or delivered without ack) per second'],
          ['ρ', 'num', 'utilisation λ/μ'], ['L', 'num', 'messages in the queue (ready + unacked)'], ['W', 'num', 'time in queue by Little\'s law, L/λ'],
          ['W p50 / p99', 'num', 'time in queue measured per message, enqueue to ack, over the last minute'],
          ['L̂ M/M/1', 'num', 'M/M/1 predicted length ρ/(1−ρ)'], ['Ŵ M/M/1', 'num', 'M/M/1 predicted time in queue L̂/λ'], 'State'].filter((c) => c !== null),
      }, rows.map((q) => {
        const f = queueing(q);
        const feats = [q.durable ? badge('D', '', 'durable') : null, q.auto_delete ? badge('AD', '', 'auto delete') : null,
          q.exclusive ? badge('Excl', '', 'exclusive') : null,
          Object.keys(q.arguments || {}).length ? badge('Args', '', JSON.stringify(q.arguments)) : null];
        return h('tr', { 'data-queue': q.name },
          many ? td(q.vhost) : null,
          td(h('a', { href: '#/queues/' + enc(q.vhost) + '/' + enc(q.name) }, q.name)),
          clustered ? td(q.node) : null,
          td(feats),
          num(fmtInt(q.messages_ready)), num(fmtInt(q.messages_unacknowledged)), num(fmtInt(q.messages)), num(fmtInt(q.consumers)),
          num(fmtRate(f.arrival_rate)), num(fmtRate(f.service_rate)),
          num(fmtNum(f.utilisation)), num(fmtInt(f.length)), num(fmtSecs(f.time_in_queue_seconds)),
          num(measured(f).samples ? fmtSecs(measured(f).p50_seconds) + ' / ' + fmtSecs(measured(f).p99_seconds) : '–'),
          num(fmtNum(f.mm1_predicted_length)), num(fmtSecs(f.mm1_predicted_time_in_queue_seconds)),
          td(healthBadge(f)));
      }), last.length ? 'No queue matches the filter.' : 'No queues yet.'));
    }
    filter.addEventListener('input', render);
    vsel.addEventListener('change', () => tick());
    return {
      async refresh() {
        const path = vsel.value ? '/queues/' + enc(vsel.value) : '/queues';
        last = await get(path);
        for (const q of last) recordQueue(q.vhost, q);
        render();
      },
    };
  }

  // A stream's log (segments, offsets, retention's reach, tracking) and a quorum queue's
  // members, as the details table shows them.
  function streamRows(q) {
    const rows = [];
    const st = q.stream;
    if (st) {
      const stamp = (t) => t == null ? '–' : new Date(t).toLocaleString();
      const tracked = (m) => Object.keys(m || {}).length;
      rows.push(
        h('tr', null, h('th', null, 'Segments'), h('td', { id: 'queue-stream-segments' }, fmtInt(st.segments))),
        h('tr', null, h('th', null, 'Size on disk'), h('td', { id: 'queue-stream-size' }, fmtBytes(st.size_bytes))),
        h('tr', null, h('th', null, 'Offsets'), h('td', { id: 'queue-stream-offsets' },
          st.last_offset == null ? 'empty (next ' + fmtInt(st.next_offset) + ')' : fmtInt(st.first_offset) + ' – ' + fmtInt(st.last_offset))),
        h('tr', null, h('th', null, 'Oldest / newest'), h('td', null, stamp(st.first_timestamp) + ' / ' + stamp(st.last_timestamp))),
        h('tr', null, h('th', null, 'Tracking'), h('td', { id: 'queue-stream-tracking' },
          tracked(st.tracking && st.tracking.offsets) + ' consumer offsets, ' + tracked(st.tracking && st.tracking.sequences) + ' publisher sequences')));
      // Each named consumer's stored offset and how far it is behind the log's last
      // offset; each named publisher's last sequence (deduplication).
      const offsets = Object.entries((st.tracking && st.tracking.offsets) || {});
      const sequences = Object.entries((st.tracking && st.tracking.sequences) || {});
      const lag = (o) => st.last_offset == null ? '' : ' (lag ' + fmtInt(Math.max(0, st.last_offset - o)) + ')';
      if (offsets.length) {
        rows.push(h('tr', null, h('th', null, 'Consumer offsets'), h('td', { id: 'queue-stream-consumer-offsets' },
          offsets.map(([name, o]) => name + ': ' + fmtInt(o) + lag(o)).join(', '))));
      }
      if (sequences.length) {
        rows.push(h('tr', null, h('th', null, 'Publisher sequences'), h('td', { id: 'queue-stream-publisher-sequences' },
          sequences.map(([name, n]) => name + ': ' + fmtInt(n)).join(', '))));
      }
    }
    if (q.type === 'quorum' && q.members) {
      rows.push(
        h('tr', null, h('th', null, 'Leader'), h('td', { id: 'queue-leader' }, q.leader || '–')),
        h('tr', null, h('th', null, 'Members'), h('td', null, q.members.join(', ')  + ' (online: ' + (q.online || []).join(', ') + ')')));
    }
    return rows;
  }

  function queuePage(main, vhost, name) {
    const cards = h('div', { class: 'cards', id: 'queue-figures' });
    const rates = chartBox('Rates (messages per second, 1 min window)', [
      { key: 'arrival', label: 'λ in', color: COLORS.blue },
      { key: 'service', label: 'μ out', color: COLORS.green },
      { key: 'deliver', label: 'deliver/get', color: COLORS.purple, dash: true },
    ], fmtNum, 'chart-queue-rates');
    const length = chartBox('Queue length', [
      { key: 'length', label: 'L', color: COLORS.grey },
      { key: 'ready', label: 'ready', color: COLORS.blue },
      { key: 'unacked', label: 'unacked', color: COLORS.orange },
      { key: 'mm1_length', label: 'L̂ M/M/1', color: COLORS.red, dash: true },
    ], fmtCount, 'chart-queue-length');
    const wait = chartBox('Time in queue', [
      { key: 'wait', label: 'W = L/λ', color: COLORS.purple },
      { key: 'wait_p50', label: 'measured p50', color: COLORS.green },
      { key: 'wait_p99', label: 'measured p99', color: COLORS.orange },
      { key: 'mm1_wait', label: 'Ŵ M/M/1', color: COLORS.red, dash: true },
    ], fmtSecs, 'chart-queue-wait');
    const details = h('div', { class: 'panel', id: 'queue-details' });
    const consumers = h('div', { id: 'queue-consumers' });
    const bindings = h('div', { id: 'queue-bindings' });
    const actionsOut = h('div', { class: 'result', id: 'queue-actions-result' });
    const base = '/queues/' + enc(vhost) + '/' + enc(name);
    const purge = h('button', { type: 'button', class: 'secondary', id: 'queue-purge' }, 'Purge messages');
    purge.addEventListener('click', action(actionsOut, async () => {
      if (!window.confirm('Purge all ready messages of queue ' + name + '?')) return null;
      await api('DELETE', base + '/contents');
      return 'Queue purged.';
    }));
    const del = h('button', { type: 'button', class: 'danger', id: 'queue-delete' }, 'Delete queue');
    del.addEventListener('click', action(actionsOut, async () => {
      if (!window.confirm('Delete queue ' + name + ' and its messages?')) return null;
      await api('DELETE', base);
      location.hash = '#/queues';
      return null;
    }));
    const bindOut = h('div', { class: 'result' });
    const bx = h('input', { id: 'queue-bind-exchange', placeholder: 'exchange' });
    const bk = h('input', { id: 'queue-bind-key', placeholder: 'routing key' });
    const bindForm = h('form', { class: 'stack', id: 'queue-bind-form' },
      h('div', { class: 'row' }, field('From exchange', bx), field('Routing key', bk),
        h('button', { type: 'submit' }, 'Bind')), bindOut);
    bindForm.addEventListener('submit', action(bindOut, async () => {
      if (!bx.value.trim()) throw new Error('Name the exchange to bind from.');
      await api('POST', '/bindings/' + enc(vhost) + '/e/' + enc(bx.value.trim()) + '/q/' + enc(name), { routing_key: bk.value, arguments: {} });
      return 'Bound from ' + bx.value.trim() + '.';
    }));
    append(main,
      h('h1', null, 'Queue ', h('span', { id: 'queue-name' }, name), h('span', { class: 'sub' }, 'in virtual host ' + vhost)),
      cards,
      h('p', { class: 'explain', id: 'queue-explain' }),
      h('div', { class: 'charts' }, rates.el, length.el, wait.el),
      h('div', { class: 'cols' },
        h('div', null, h('h2', null, 'Details'), details),
        h('div', null, h('h2', null, 'Consumers'), consumers)),
      h('h2', null, 'Bindings'), bindings, bindForm,
      h('div', { class: 'cols' },
        h('div', null, h('h2', null, 'Publish message'),
          h('p', { class: 'explain' }, 'Published to the default exchange with the queue\'s name as routing key.'),
          publishForm('queue-publish', { vhost, exchange: '', routingKey: name, fixedKey: true })),
        h('div', null, h('h2', null, 'Get messages'),
          h('p', { class: 'explain' }, 'Getting messages is a destructive action: with "Nack message requeue true" they go back to the queue, marked redelivered.'),
          getForm(vhost, name))),
      h('h2', null, 'Purge or delete'), h('div', { class: 'toolbar' }, purge, del), actionsOut);
    return {
      async refresh() {
        let q;
        try {
          q = await get(base);
        } catch (e) {
          if (e.status === 404) {
            fill(cards, h('div', { class: 'flash error' }, 'Queue ' + name + ' does not exist (any more).'));
            return;
          }
          throw e;
        }
        const f = queueing(q);
        const hist = recordQueue(vhost, q);
        rates.draw(hist);
        length.draw(hist);
        wait.draw(hist);
        const s = health(f);
        const rhoCls = f.utilisation == null ? '' : f.utilisation > GROWING ? 'bad' : 'ok';
        fill(cards,
          card('Ready', fmtInt(q.messages_ready), null, null, 'queue-ready'),
          card('Unacked', fmtInt(q.messages_unacknowledged), null, null, 'queue-unacked'),
          card('Consumers', fmtInt(q.consumers)),
          card('λ arrival', fmtRate(f.arrival_rate), 'messages in'),
          card('μ service', fmtRate(f.service_rate), 'messages acked'),
          card('ρ utilisation', fmtNum(f.utilisation), s.text, rhoCls),
          card('L length', fmtInt(f.length), 'M/M/1 predicts ' + fmtNum(f.mm1_predicted_length)),
          card('W time in queue', fmtSecs(f.time_in_queue_seconds), 'M/M/1 predicts ' + fmtSecs(f.mm1_predicted_time_in_queue_seconds)),
          card('W measured p50', fmtSecs(measured(f).p50_seconds),
            'p99 ' + fmtSecs(measured(f).p99_seconds) + ' · mean ' + fmtSecs(measured(f).mean_seconds) +
            ' · ' + fmtInt(measured(f).samples || 0) + ' msgs', null, 'queue-wait-measured'));
        fill($('#queue-explain'), s.title + ' Figures over the last ' + (f.window_seconds || 60) + ' s.');
        fill(details, h('table', { class: 'kv' },
          h('tr', null, h('th', null, 'Type'), h('td', null, q.type)),
          h('tr', null, h('th', null, 'Node'), h('td', { id: 'queue-node' }, q.node)),
          h('tr', null, h('th', null, 'Features'), h('td', null, [q.durable ? 'durable' : 'transient', q.auto_delete ? 'auto-delete' : null, q.exclusive ? 'exclusive' : null].filter(Boolean).join(', '))),
          h('tr', null, h('th', null, 'Arguments'), h('td', { class: 'mono' }, fmtJson(q.arguments) || '–')),
          h('tr', null, h('th', null, 'Policy'), h('td', null, q.policy || '–')),
          h('tr', null, h('th', null, 'State'), h('td', null, q.state)),
          h('tr', null, h('th', null, 'Ready bytes'), h('td', null, fmtBytes(q.message_bytes_ready))),
          h('tr', null, h('th', null, 'Published'), h('td', null, fmtInt(q.message_stats && q.message_stats.publish))),
          h('tr', null, h('th', null, 'Delivered'), h('td', null, fmtInt(q.message_stats && q.message_stats.deliver_get))),
          h('tr', null, h('th', null, 'Acknowledged'), h('td', null, fmtInt(q.message_stats && q.message_stats.ack))),
          ...streamRows(q)));
        fill(consumers, table({ cols: ['Channel', 'Consumer tag', 'Ack required', ['Prefetch', 'num'], 'Active', 'Arguments'] },
          (q.consumer_details || []).map((c) => h('tr', null,
            td(c.channel_details && c.channel_details.name || '–'), td(c.consumer_tag, 'mono'), td(String(c.ack_required)),
            num(fmtInt(c.prefetch_count)), td(c.activity_status || String(c.active)), td(fmtJson(c.arguments), 'mono'))),
          'No consumers.'));
        const bs = await get(base + '/bindings');
        fill(bindings, table({ cols: ['From', 'Routing key', 'Arguments', ''] }, bs.map((b) => {
          const unbind = b.source === '' ? h('span', { class: 'muted' }, '(default binding)') : h('button', {
            type: 'button', class: 'danger small', onclick: action(actionsOut, async () => {
              await api('DELETE', '/bindings/' + enc(vhost) + '/e/' + enc(b.source) + '/q/' + enc(name) + '/' + enc(b.properties_key));
              return 'Unbound from ' + b.source + '.';
            }),
          }, 'Unbind');
          return h('tr', null, td(b.source === '' ? '(AMQP default)' : h('a', { href: '#/exchanges/' + enc(vhost) + '/' + enc(b.source) }, b.source)),
            td(b.routing_key), td(fmtJson(b.arguments), 'mono'), td(unbind));
        })));
      },
    };
  }

  async function exchangesPage(main) {
    const vhosts = await listVhosts();
    const vsel = vhostSelect('exchanges-vhost', vhosts, true, '');
    const list = h('div', { id: 'exchanges-list' });
    const out = h('div', { class: 'result', id: 'exchange-add-result' });
    const addVhost = vhostSelect('exchange-add-vhost', vhosts, false, '/');
    const name = h('input', { id: 'exchange-add-name' });
    const type = h('select', { id: 'exchange-add-type' }, ['direct', 'fanout', 'headers', 'topic', 'x-delayed-message'].map((t) => h('option', { value: t }, t)));
    const args = h('textarea', { id: 'exchange-add-arguments', placeholder: '{"alternate-exchange": "unrouted"}' });
    const form = h('form', { class: 'stack', id: 'exchange-add-form' },
      h('div', { class: 'row' }, field('Virtual host', addVhost), field('Name', name), field('Type', type)),
      h('div', null, check('Durable', 'exchange-add-durable', true), check('Auto delete', 'exchange-add-auto-delete', false), check('Internal', 'exchange-add-internal', false)),
      field('Arguments (JSON)', args),
      h('button', { type: 'submit', id: 'exchange-add-submit' }, 'Add exchange'), out);
    form.addEventListener('submit', action(out, async () => {
      const n = name.value.trim();
      if (!n) throw new Error('The exchange needs a name.');
      await api('PUT', '/exchanges/' + enc(addVhost.value) + '/' + enc(n), {
        type: type.value, durable: $('#exchange-add-durable').checked, auto_delete: $('#exchange-add-auto-delete').checked,
        internal: $('#exchange-add-internal').checked, arguments: parseJsonField(args.value, 'Arguments'),
      });
      name.value = '';
      return 'Exchange ' + n + ' declared.';
    }));
    append(main, h('h1', null, 'Exchanges'), h('div', { class: 'toolbar' }, vsel), list,
      h('details', { class: 'section', open: true }, h('summary', null, 'Add a new exchange'), form));
    vsel.addEventListener('change', () => tick());
    return {
      async refresh() {
        const xs = await get(vsel.value ? '/exchanges/' + enc(vsel.value) : '/exchanges');
        const many = !vsel.value;
        fill(list, table({ cols: [many ? 'Virtual host' : null, 'Name', 'Type', 'Features'].filter(Boolean) }, xs.map((x) => h('tr', { 'data-exchange': x.name },
          many ? td(x.vhost) : null,
          td(h('a', { href: '#/exchanges/' + enc(x.vhost) + '/' + enc(exchangeUrlName(x.name)) }, exchangeLabel(x.name))),
          td(x.type),
          td([x.durable ? badge('D', '', 'durable') : null, x.auto_delete ? badge('AD', '', 'auto delete') : null,
            x.internal ? badge('I', '', 'internal') : null,
            Object.keys(x.arguments || {}).length ? badge('Args', '', JSON.stringify(x.arguments)) : null]))), 'No exchanges.'));
      },
    };
  }

  function exchangePage(main, vhost, urlName) {
    const name = urlName === 'amq.default' ? '' : urlName;
    const base = '/exchanges/' + enc(vhost) + '/' + enc(urlName);
    const details = h('div', { class: 'panel', id: 'exchange-details' });
    const bindings = h('div', { id: 'exchange-bindings' });
    const out = h('div', { class: 'result', id: 'exchange-actions-result' });
    const bindOut = h('div', { class: 'result' });
    const dtype = h('select', { id: 'exchange-bind-type' }, h('option', { value: 'q' }, 'To queue'), h('option', { value: 'e' }, 'To exchange'));
    const dest = h('input', { id: 'exchange-bind-destination', placeholder: 'destination' });
    const key = h('input', { id: 'exchange-bind-key', placeholder: 'routing key' });
    const bargs = h('input', { id: 'exchange-bind-arguments', placeholder: '{"x-match": "all"}', size: 24 });
    const bindForm = h('form', { class: 'stack', id: 'exchange-bind-form' },
      h('div', { class: 'row' }, field('Destination', dtype), field('Name', dest), field('Routing key', key), field('Arguments (JSON)', bargs),
        h('button', { type: 'submit' }, 'Bind')), bindOut);
    bindForm.addEventListener('submit', action(bindOut, async () => {
      if (!dest.value.trim()) throw new Error('Name the destination.');
      await api('POST', '/bindings/' + enc(vhost) + '/e/' + enc(name) + '/' + dtype.value + '/' + enc(dest.value.trim()),
        { routing_key: key.value, arguments: parseJsonField(bargs.value, 'Arguments') });
      return 'Bound to ' + dest.value.trim() + '.';
    }));
    const system = name === '' || name.startsWith('amq.');
    const del = h('button', { type: 'button', class: 'danger', id: 'exchange-delete', disabled: system }, 'Delete exchange');
    del.addEventListener('click', action(out, async () => {
      if (!window.confirm('Delete exchange ' + name + '?')) return null;
      await api('DELETE', base);
      location.hash = '#/exchanges';
      return null;
    }));
    append(main, h('h1', null, 'Exchange ', h('span', { id: 'exchange-name' }, exchangeLabel(name)), h('span', { class: 'sub' }, 'in virtual host ' + vhost)),
      details, h('h2', null, 'Bindings from this exchange'), bindings, name === '' ? null : bindForm,
      h('h2', null, 'Publish message'), publishForm('exchange-publish', { vhost, exchange: name, routingKey: '' }),
      h('h2', null, 'Delete'), system ? h('p', { class: 'muted' }, 'System exchanges cannot be deleted.') : del, out);
    return {
      async refresh() {
        let x;
        try {
          x = await get(base);
        } catch (e) {
          if (e.status === 404) {
            fill(details, h('div', { class: 'flash error' }, 'Exchange ' + name + ' does not exist (any more).'));
            return;
          }
          throw e;
        }
        fill(details, h('table', { class: 'kv' },
          h('tr', null, h('th', null, 'Type'), h('td', null, x.type)),
          h('tr', null, h('th', null, 'Features'), h('td', null, [x.durable ? 'durable' : 'transient', x.auto_delete ? 'auto-delete' : null, x.internal ? 'internal' : null].filter(Boolean).join(', '))),
          h('tr', null, h('th', null, 'Arguments'), h('td', { class: 'mono' }, fmtJson(x.arguments) || '–'))));
        if (name === '') {
          fill(bindings, h('p', { class: 'muted' }, 'The default exchange is implicitly bound to every queue, with the queue\'s name as routing key.'));
          return;
        }
        const bs = await get(base + '/bindings/source');
        fill(bindings, table({ cols: ['To', 'Type', 'Routing key', 'Arguments', ''] }, bs.map((b) => h('tr', null,
          td(b.destination_type === 'queue'
            ? h('a', { href: '#/queues/' + enc(vhost) + '/' + enc(b.destination) }, b.destination)
            : h('a', { href: '#/exchanges/' + enc(vhost) + '/' + enc(b.destination) }, b.destination)),
          td(b.destination_type), td(b.routing_key), td(fmtJson(b.arguments), 'mono'),
          td(h('button', {
            type: 'button', class: 'danger small', onclick: action(out, async () => {
              await api('DELETE', '/bindings/' + enc(vhost) + '/e/' + enc(name) + '/' + (b.destination_type === 'queue' ? 'q' : 'e') + '/' + enc(b.destination) + '/' + enc(b.properties_key));
              return 'Unbound ' + b.destination + '.';
            }),
          }, 'Unbind')))), 'No bindings.'));
      },
    };
  }

  function connectionsPage(main) {
    const list = h('div', { id: 'connections-list' });
    const out = h('div', { class: 'result' });
    append(main, h('h1', null, 'Connections'), out, list);
    return {
      async refresh() {
        const cs = await get('/connections');
        fill(list, table({ cols: ['Name', 'Protocol', 'User', 'Virtual host', 'Client', ['Channels', 'num'], ['Heartbeat', 'num'], ['From client', 'num'], ['To client', 'num'], 'Connected', ''] },
          cs.map((c) => {
            const cp = c.client_properties || {};
            const client = [cp.product, cp.version].filter(Boolean).join(' ') + (c.user_provided_name ? ' · ' + c.user_provided_name : '');
            const rate = (d) => (d ? fmtBytes(d.rate) + '/s' : '–');
            return h('tr', { 'data-connection': c.name },
              td(c.name, 'mono'), td(c.protocol || '–'), td(c.user), td(c.vhost), td(client || '–'),
              num(fmtInt(c.channels)), num(c.timeout ? c.timeout + ' s' : 'off'),
              num(rate(c.recv_oct_details)), num(rate(c.send_oct_details)),
              td(c.connected_at ? new Date(c.connected_at).toLocaleString() : '–'),
              td(h('button', {
                type: 'button', class: 'danger small', onclick: action(out, async () => {
                  if (!window.confirm('Close connection ' + c.name + '?')) return null;
                  await api('DELETE', '/connections/' + enc(c.name), undefined, { 'X-Reason': 'Closed via the Pier management UI' });
                  return 'Connection ' + c.name + ' closed.';
                }),
              }, 'Close')));
          }), 'No connections.'));
      },
    };
  }

  function channelsPage(main) {
    const list = h('div', { id: 'channels-list' });
    append(main, h('h1', null, 'Channels'), list);
    return {
      async refresh() {
        const chs = await get('/channels');
        fill(list, table({ cols: ['Channel', 'User', 'Virtual host', ['Consumers', 'num'], ['Unacked', 'num'], ['Delivered', 'num'], 'State'] },
          chs.map((c) => h('tr', null, td(c.name, 'mono'), td(c.user), td(c.vhost), num(fmtInt(c.consumer_count)),
            num(fmtInt(c.messages_unacknowledged)), num(fmtInt(c.message_stats && c.message_stats.deliver_get)), td(c.state))),
          'No channels.'));
      },
    };
  }

  function adminPage(main) {
    const users = h('div', { id: 'admin-users' });
    const vhostsBox = h('div', { id: 'admin-vhosts' });
    const perms = h('div', { id: 'admin-permissions' });
    const policies = h('div', { id: 'admin-policies' });
    const out = h('div', { class: 'result', id: 'admin-result' });

    const uName = h('input', { id: 'user-add-name' });
    const uPass = h('input', { id: 'user-add-password', type: 'password', autocomplete: 'new-password' });
    const uTags = h('input', { id: 'user-add-tags', placeholder: 'administrator, monitoring' });
    const userForm = h('form', { class: 'stack', id: 'user-add-form' },
      h('div', { class: 'row' }, field('Username', uName), field('Password', uPass), field('Tags (comma-separated)', uTags),
        h('button', { type: 'submit', id: 'user-add-submit' }, 'Add / update user')));
    userForm.addEventListener('submit', action(out, async () => {
      const n = uName.value.trim();
      if (!n) throw new Error('The user needs a name.');
      await api('PUT', '/users/' + enc(n), { password: uPass.value, tags: uTags.value });
      uName.value = ''; uPass.value = '';
      return 'User ' + n + ' saved.';
    }));

    const vName = h('input', { id: 'vhost-add-name' });
    const vDesc = h('input', { id: 'vhost-add-description' });
    const vhostForm = h('form', { class: 'stack', id: 'vhost-add-form' },
      h('div', { class: 'row' }, field('Name', vName), field('Description', vDesc),
        h('button', { type: 'submit', id: 'vhost-add-submit' }, 'Add virtual host')));
    vhostForm.addEventListener('submit', action(out, async () => {
      const n = vName.value.trim();
      if (!n) throw new Error('The virtual host needs a name.');
      await api('PUT', '/vhosts/' + enc(n), { description: vDesc.value });
      vName.value = ''; vDesc.value = '';
      return 'Virtual host ' + n + ' added.';
    }));

    const pUser = h('input', { id: 'perm-user', placeholder: 'user' });
    const pVhost = h('input', { id: 'perm-vhost', value: '/' });
    const pConf = h('input', { id: 'perm-configure', value: '.*', size: 8 });
    const pWrite = h('input', { id: 'perm-write', value: '.*', size: 8 });
    const pRead = h('input', { id: 'perm-read', value: '.*', size: 8 });
    const permForm = h('form', { class: 'stack', id: 'perm-form' },
      h('div', { class: 'row' }, field('User', pUser), field('Virtual host', pVhost), field('Configure', pConf), field('Write', pWrite), field('Read', pRead),
        h('button', { type: 'submit' }, 'Set permission')));
    permForm.addEventListener('submit', action(out, async () => {
      await api('PUT', '/permissions/' + enc(pVhost.value) + '/' + enc(pUser.value.trim()), { configure: pConf.value, write: pWrite.value, read: pRead.value });
      return 'Permission of ' + pUser.value.trim() + ' on ' + pVhost.value + ' set.';
    }));

    const polVhost = h('input', { id: 'policy-vhost', value: '/' });
    const polName = h('input', { id: 'policy-name' });
    const polPattern = h('input', { id: 'policy-pattern', placeholder: '^orders\\.' });
    const polApply = h('select', { id: 'policy-apply-to' }, ['all', 'queues', 'exchanges'].map((a) => h('option', { value: a }, a)));
    const polPrio = h('input', { id: 'policy-priority', type: 'number', value: '0', size: 4 });
    const polDef = h('input', { id: 'policy-definition', placeholder: '{"max-length": 10000, "message-ttl": 60000}', size: 40 });
    const policyForm = h('form', { class: 'stack', id: 'policy-form' },
      h('div', { class: 'row' }, field('Virtual host', polVhost), field('Name', polName), field('Pattern', polPattern), field('Apply to', polApply), field('Priority', polPrio)),
      h('div', { class: 'row' }, field('Definition (JSON)', polDef), h('button', { type: 'submit' }, 'Add / update policy')));
    policyForm.addEventListener('submit', action(out, async () => {
      const n = polName.value.trim();
      if (!n) throw new Error('The policy needs a name.');
      await api('PUT', '/policies/' + enc(polVhost.value) + '/' + enc(n), {
        pattern: polPattern.value, 'apply-to': polApply.value, priority: parseInt(polPrio.value, 10) || 0,
        definition: parseJsonField(polDef.value, 'Definition'),
      });
      return 'Policy ' + n + ' set.';
    }));

    append(main, h('h1', null, 'Admin'), out,
      h('h2', null, 'Users'), users, userForm,
      h('h2', null, 'Virtual hosts'), vhostsBox, vhostForm,
      h('h2', null, 'Permissions'), perms, permForm,
      h('h2', null, 'Policies'), policies, policyForm);

    const del = (what, path, label) => h('button', {
      type: 'button', class: 'danger small', onclick: action(out, async () => {
        if (!window.confirm('Delete ' + what + ' ' + label + '?')) return null;
        await api('DELETE', path);
        return 'Deleted ' + what + ' ' + label + '.';
      }),
    }, 'Delete');
    async function section(box, fn) {
      try {
        await fn();
      } catch (e) {
        if (e.status === 401) fill(box, h('p', { class: 'muted' }, e.message + ': this needs the administrator tag.'));
        else throw e;
      }
    }
    return {
      async refresh() {
        await Promise.all([
          section(users, async () => {
            const us = await get('/users');
            fill(users, table({ cols: ['Name', 'Tags', 'Has password', ''] }, us.map((u) => h('tr', { 'data-user': u.name },
              td(u.name), td((Array.isArray(u.tags) ? u.tags : String(u.tags || '').split(',')).filter(Boolean).map((t) => badge(t))),
              td(u.password_hash ? 'yes' : 'no'), td(del('user', '/users/' + enc(u.name), u.name))))));
          }),
          section(vhostsBox, async () => {
            const vs = await get('/vhosts');
            fill(vhostsBox, table({ cols: ['Name', 'Description', ['Ready', 'num'], ['Unacked', 'num'], ['λ in', 'num'], ['μ out', 'num'], ''] }, vs.map((v) => {
              const f = v.pier_queueing || {};
              return h('tr', { 'data-vhost': v.name }, td(v.name), td(v.description || ''), num(fmtInt(v.messages_ready)), num(fmtInt(v.messages_unacknowledged)),
                num(fmtRate(f.arrival_rate)), num(fmtRate(f.service_rate)), td(del('virtual host', '/vhosts/' + enc(v.name), v.name)));
            })));
          }),
          section(perms, async () => {
            const ps = await get('/permissions');
            fill(perms, table({ cols: ['User', 'Virtual host', 'Configure', 'Write', 'Read', ''] }, ps.map((p) => h('tr', null,
              td(p.user), td(p.vhost), td(p.configure, 'mono'), td(p.write, 'mono'), td(p.read, 'mono'),
              td(del('permission of', '/permissions/' + enc(p.vhost) + '/' + enc(p.user), p.user + ' on ' + p.vhost)))), 'No permissions.'));
          }),
          section(policies, async () => {
            const ps = await get('/policies');
            fill(policies, table({ cols: ['Virtual host', 'Name', 'Pattern', 'Apply to', 'Definition', ['Priority', 'num'], ''] }, ps.map((p) => h('tr', { 'data-policy': p.name },
              td(p.vhost), td(p.name), td(p.pattern, 'mono'), td(p['apply-to']), td(fmtJson(p.definition), 'mono'), num(String(p.priority)),
              td(del('policy', '/policies/' + enc(p.vhost) + '/' + enc(p.name), p.name)))), 'No policies.'));
          }),
        ]);
      },
    };
  }

  // ---------------------------------------------------------------- routing and refresh

  let current = null;
  let busy = false;
  let again = false; // a refresh was asked for while one was running

  function routeParts() {
    return location.hash.replace(/^#\/?/, '').split('/').filter((p, i) => p !== '' || i > 0).map((p) => {
      try { return decodeURIComponent(p); } catch (_) { return p; }
    });
  }

  async function route() {
    if (!token()) {
      showLogin();
      return;
    }
    const [section, a, b] = routeParts();
    let name = 'overview', mount = overviewPage, args = [];
    if (section === 'queues' && a != null && b != null) { name = 'queues'; mount = queuePage; args = [a, b]; }
    else if (section === 'queues') { name = 'queues'; mount = queuesPage; }
    else if (section === 'exchanges' && a != null && b != null) { name = 'exchanges'; mount = exchangePage; args = [a, b]; }
    else if (section === 'exchanges') { name = 'exchanges'; mount = exchangesPage; }
    else if (section === 'connections') { name = 'connections'; mount = connectionsPage; }
    else if (section === 'channels') { name = 'channels'; mount = channelsPage; }
    else if (section === 'admin') { name = 'admin'; mount = adminPage; }
    for (const link of document.querySelectorAll('#nav a')) link.classList.toggle('active', link.dataset.page === name);
    const main = clear($('#main'));
    main.dataset.page = name;
    const mine = {};
    current = mine;
    try {
      const page = await mount(main, ...args);
      if (current !== mine) return;
      Object.assign(mine, page);
      document.title = 'Pier · ' + name.charAt(0).toUpperCase() + name.slice(1);
      await tick();
    } catch (e) {
      if (current === mine) fill(main, h('div', { class: 'flash error' }, e.message || String(e)));
    }
  }

  async function tick() {
    const page = current;
    if (!page || !page.refresh || !token()) return;
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      await page.refresh();
      if (page === current) {
        fill($('#status-line'), 'Updated ' + fmtClock(Date.now()) + ' · refreshing every 5 s');
        $('#refresh-error').hidden = true;
      }
    } catch (e) {
      if (page === current && token()) {
        const err = $('#refresh-error');
        fill(err, e.message || String(e));
        err.hidden = false;
      }
    } finally {
      busy = false;
      if (again) {
        again = false;
        setTimeout(tick, 0);
      }
    }
  }

  // ---------------------------------------------------------------- login

  function showLogin(message) {
    current = null;
    $('#main').hidden = true;
    $('#nav').hidden = true;
    $('#session').hidden = true;
    $('#footer').hidden = true;
    $('#login').hidden = false;
    const err = $('#login-error');
    if (message) {
      fill(err, message);
      err.hidden = false;
    } else {
      err.hidden = true;
    }
    $('#login-user').focus();
  }

  function logout(message) {
    sessionStorage.removeItem(AUTH_KEY);
    sessionStorage.removeItem(USER_KEY);
    showLogin(message);
  }

  async function enter() {
    const who = await api('GET', '/whoami');
    const tags = Array.isArray(who.tags) ? who.tags.join(', ') : String(who.tags || '');
    fill($('#who'), who.name + (tags ? ' (' + tags + ')' : ''));
    $('#login').hidden = true;
    $('#main').hidden = false;
    $('#nav').hidden = false;
    $('#session').hidden = false;
    $('#footer').hidden = false;
    get('/overview').then((ov) => fill($('#node-name'), ov.node || '')).catch(() => {});
    await route();
  }

  function utf8Base64(s) {
    const bytes = new TextEncoder().encode(s);
    let bin = '';
    for (const b of bytes) bin += String.fromCharCode(b);
    return btoa(bin);
  }

  $('#login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const user = $('#login-user').value;
    const password = $('#login-password').value;
    sessionStorage.setItem(AUTH_KEY, utf8Base64(user + ':' + password));
    sessionStorage.setItem(USER_KEY, user);
    try {
      await enter();
      $('#login-password').value = '';
    } catch (e) {
      const wrong = e.status === 401 && /^Login failed/.test(e.message);
      logout(wrong ? 'Login failed: wrong username or password.' : e.message);
    }
  });
  $('#logout').addEventListener('click', () => logout());
  window.addEventListener('hashchange', () => { if (token()) route(); });
  window.addEventListener('resize', () => tick());
  setInterval(() => { if (!document.hidden) tick(); }, REFRESH_MS);

  if (token()) {
    enter().catch((e) => logout(e.message));
  } else {
    showLogin();
  }
})();
