// The relay console: a hash-routed page over the public admin API (/api/v1/…).
// No framework, no build step. Text always goes into the page as text nodes (never
// parsed as markup); the bearer token lives in sessionStorage and nothing else secret
// is stored. Money is shown as the exact decimal strings the API returns (sums are
// made from integer nanodollars with BigInt); floats only size bars and chart lines.

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
const banner = document.getElementById('banner');

// ---------------------------------------------------------------- DOM and text
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'value') el.value = v;
    else if (k === 'checked') el.checked = !!v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, kids);
  return el;
}
function append(el, kids) {
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}
function svg(tag, attrs, ...kids) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  append(el, kids);
  return el;
}
function clear(el) { while (el.firstChild) el.firstChild.remove(); return el; }

let fieldSeq = 0;
// A labelled input: the label wraps its control, so every control has a name.
function field(label, input) { return h('label', {}, label, input); }
function input(name, attrs) {
  return h('input', Object.assign({ name, id: 'f' + (++fieldSeq) + '-' + name }, attrs || {}));
}
function select(name, options, value) {
  const s = h('select', { name, id: 'f' + (++fieldSeq) + '-' + name });
  for (const o of options) {
    const [v, text] = Array.isArray(o) ? o : [o, o];
    s.append(h('option', { value: v }, text));
  }
  if (value !== undefined && value !== null) s.value = value;
  return s;
}
function formValues(form) {
  const out = {};
  for (const el of form.elements) {
    if (!el.name) continue;
    if (el.type === 'checkbox') { (out[el.name] ||= []); if (el.checked) out[el.name].push(el.value); }
    else out[el.name] = el.value.trim();
  }
  return out;
}
const nonEmpty = (v) => (v === '' || v === undefined ? null : v);
const intOrNull = (v) => (v === '' || v === undefined ? null : Number.parseInt(v, 10));

// ---------------------------------------------------------------- errors
class ApiError extends Error {
  constructor(status, message, code) { super(message); this.status = status; this.code = code; }
}
function describe(err) {
  if (err instanceof ApiError) return `${err.message} (HTTP ${err.status}${err.code ? ', code ' + err.code : ''})`;
  return String(err && err.message ? err.message : err);
}
function showBanner(text, ok) {
  banner.hidden = false;
  banner.className = ok ? 'banner ok' : 'banner';
  banner.textContent = text;
}
function hideBanner() { banner.hidden = true; banner.textContent = ''; }
function errorBox(err) { return h('p', { class: 'error', role: 'alert' }, describe(err)); }
// Runs an action from a button: errors go to the banner, success says so.
async function act(button, label, fn) {
  if (button) button.disabled = true;
  try {
    const msg = await fn();
    showBanner(msg || `${label}: done`, true);
    return true;
  } catch (err) {
    showBanner(`${label} failed: ${describe(err)}`);
    return false;
  } finally {
    if (button) button.disabled = false;
  }
}

// ---------------------------------------------------------------- API
function token() { return sessionStorage.getItem('relay.token'); }
async function request(method, path, body) {
  const headers = {};
  if (token()) headers.authorization = 'Bearer ' + token();
  if (body !== undefined) headers['content-type'] = 'application/json';
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  if (!r.ok) {
    let data = null;
    try { data = JSON.parse(text); } catch { /* not JSON: the text is the message */ }
    if (r.status === 401 && path !== '/api/v1/auth/login') sessionStorage.removeItem('relay.token');
    throw new ApiError(r.status, (data && data.error) || text || r.statusText, data && data.code);
  }
  return text;
}
async function api(method, path, body) {
  const text = await request(method, path, body);
  return text ? JSON.parse(text) : null;
}
const get = (path) => api('GET', path);
function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== '') p.set(k, v);
  const s = p.toString();
  return s ? '?' + s : '';
}
// Every item of a paged list (`{items, total}`), 100 at a time.
async function allPages(path, params) {
  const items = [];
  for (let page = 1; ; page++) {
    const r = await get(path + qs(Object.assign({}, params, { page, limit: 100 })));
    items.push(...r.items);
    if (r.items.length === 0 || items.length >= r.total) return items;
  }
}

// ---------------------------------------------------------------- time and money
// Date-time inputs read in the browser's own zone.
function browserZone() { return Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC'; }
function zone() { return localStorage.getItem('relay.tz') || Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC'; }
function fmtTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return new Intl.DateTimeFormat('en-CA', { timeZone: zone(), year: 'numeric', month: '2-digit', day: '2-digit',
    hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' }).format(d).replace(',', '');
}
function today(offsetDays) {
  const d = new Date(Date.now() + (offsetDays || 0) * 86400000);
  return new Intl.DateTimeFormat('en-CA', { timeZone: zone(), year: 'numeric', month: '2-digit', day: '2-digit' }).format(d);
}
function thisMonth() { return today().slice(0, 7); }
function usd(decimal) { return decimal === null || decimal === undefined ? '—' : `${decimal} USD`; }
// Exact sum of nanodollars, written as a decimal string.
function nanosToDecimal(n) {
  const neg = n < 0n; if (neg) n = -n;
  const whole = n / 1000000000n;
  let frac = (n % 1000000000n).toString().padStart(9, '0').replace(/0+$/, '');
  return (neg ? '-' : '') + whole.toString() + (frac ? '.' + frac : '');
}
function sumNanos(rows) { return rows.reduce((s, r) => s + BigInt(r.cost_nanos || 0), 0n); }
const int = (n) => (n === null || n === undefined ? '—' : Number(n).toLocaleString('en-US'));
function tokensOf(r) {
  return r.input_tokens + r.output_tokens + r.cache_read_tokens + r.cache_write_5m_tokens + r.cache_write_1h_tokens;
}
function cacheHit(rows) {
  let read = 0, all = 0;
  for (const r of rows) { read += r.cache_read_tokens; all += r.input_tokens + r.cache_read_tokens + r.cache_write_5m_tokens + r.cache_write_1h_tokens; }
  return all === 0 ? '—' : (100 * read / all).toFixed(1) + ' %';
}
function countdown(iso) {
  const ms = new Date(iso).getTime() - Date.now();
  if (!(ms > 0)) return 'now';
  const s = Math.floor(ms / 1000);
  const hh = Math.floor(s / 3600), mm = Math.floor((s % 3600) / 60), ss = s % 60;
  return (hh ? hh + ' h ' : '') + (hh || mm ? mm + ' min ' : '') + ss + ' s';
}

// ---------------------------------------------------------------- pieces
function table(columns, rows, empty) {
  if (rows.length === 0) return h('p', { class: 'empty' }, empty);
  return h('div', { class: 'scroll' }, h('table', {},
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col', class: c.num ? 'num' : null }, c.title)))),
    h('tbody', {}, rows.map((r) => h('tr', {}, columns.map((c) => {
      const v = c.value(r);
      return h('td', { class: c.num ? 'num' : (c.wrap ? 'wrap' : null) }, v);
    }))))));
}
function stat(label, value) { return h('div', { class: 'stat' }, h('b', {}, value), h('span', {}, label)); }
function pill(text, kind) { return h('span', { class: 'pill ' + kind }, text); }
function statePill(state) {
  const kind = state === 'healthy' ? 'ok' : state === 'disabled' ? 'off' : state === 'rate_limited' || state === 'overloaded' ? 'warn' : 'bad';
  return pill(state || 'unknown', kind);
}
function download(filename, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h('a', { href: url, download: filename });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
function csvCell(v) {
  const s = v === null || v === undefined ? '' : String(v);
  return /[",\n\r]/.test(s) ? '"' + s.replaceAll('"', '""') + '"' : s;
}
function toCsv(columns, rows) {
  return [columns.join(','), ...rows.map((r) => columns.map((c) => csvCell(r[c])).join(','))].join('\r\n') + '\r\n';
}

// The dashboard chart's redraw for the current width, if one is shown.
let redrawChart = null;
window.addEventListener('resize', () => { if (redrawChart) redrawChart(); });

// A line chart (or bars, when there are few points) of one series, as SVG.
function chart(points, label, width) {
  const W = Math.max(300, Math.round(width || 640)), H = 220, L = 56, R = 14, T = 10, B = 34;
  const max = Math.max(...points.map((p) => p.y), 0) || 1;
  const x = (i) => L + (points.length === 1 ? (W - L - R) / 2 : i * (W - L - R) / (points.length - 1));
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const g = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': label, 'data-points': points.length });
  g.append(svg('title', {}, label));
  for (const f of [0, 0.5, 1]) {
    g.append(svg('line', { x1: L, x2: W - R, y1: y(max * f), y2: y(max * f), class: 'axis' }));
    g.append(svg('text', { x: L - 6, y: y(max * f) + 4, 'text-anchor': 'end' }, shortNum(max * f)));
  }
  const step = Math.max(1, Math.ceil(points.length / Math.max(2, Math.floor(W / 110))));
  points.forEach((p, i) => {
    const anchor = points.length === 1 ? 'middle' : i === 0 ? 'start' : i === points.length - 1 ? 'end' : 'middle';
    // Every `step`-th label, and the last, unless it would overlap the one before.
    if ((i % step === 0 && points.length - 1 - i >= step) || i === points.length - 1) g.append(svg('text', { x: x(i), y: H - 12, 'text-anchor': anchor }, p.x));
  });
  if (points.length > 1) g.append(svg('polyline', { class: 'series', points: points.map((p, i) => `${x(i)},${y(p.y)}`).join(' ') }));
  points.forEach((p, i) => { if (p.y > 0 || points.length === 1) g.append(svg('circle', { class: 'dot', cx: x(i), cy: y(p.y), r: 3 }, svg('title', {}, `${p.x}: ${p.label}`))); });
  return g;
}
// Every period label (`YYYY-MM-DDTHH:00`, `YYYY-MM-DD` or `YYYY-MM`) from one day to
// another, inclusive. Hours are those of the API's fixed display offset: 24 a day.
function periods(from, to, granularity) {
  const out = [];
  const d = new Date(from + 'T00:00:00Z');
  const end = new Date(to + 'T00:00:00Z');
  while (d <= end && out.length < 800) {
    if (granularity === 'hour') {
      const day = d.toISOString().slice(0, 10);
      for (let hh = 0; hh < 24; hh++) out.push(`${day}T${String(hh).padStart(2, '0')}:00`);
    } else {
      const p = d.toISOString().slice(0, granularity === 'month' ? 7 : 10);
      if (out[out.length - 1] !== p) out.push(p);
    }
    d.setUTCDate(d.getUTCDate() + 1);
  }
  return out;
}
function shortNum(v) {
  if (v >= 1e6) return (v / 1e6).toFixed(1) + 'M';
  if (v >= 1e3) return (v / 1e3).toFixed(1) + 'k';
  return v >= 10 || v === 0 ? String(Math.round(v)) : v.toPrecision(2);
}

// ---------------------------------------------------------------- session
let me = null;
let timers = [];
function every(ms, fn) { timers.push(setInterval(fn, ms)); }

const PAGES = {
  dashboard: { title: 'Dashboard', render: dashboard },
  accounts: { title: 'Accounts', admin: true, render: accounts },
  keys: { title: 'Keys', render: keys },
  users: { title: 'Users', admin: true, render: users },
  tenants: { title: 'Tenants', admin: true, render: tenants },
  groups: { title: 'Groups', admin: true, render: groups },
  usage: { title: 'Usage', render: usage },
  statements: { title: 'Statements', render: statements },
  requests: { title: 'Requests', render: requests },
  audit: { title: 'Audit', admin: true, render: audit },
};
const isAdmin = () => me && me.role === 'admin';

function renderChrome(current) {
  clear(nav); clear(who);
  if (!me) return;
  for (const [id, p] of Object.entries(PAGES)) {
    if (p.admin && !isAdmin()) continue;
    nav.append(h('a', { href: '#/' + id, 'aria-current': id === current ? 'page' : null }, p.title));
  }
  const zones = [...new Set([Intl.DateTimeFormat().resolvedOptions().timeZone, 'UTC',
    ...(Intl.supportedValuesOf ? Intl.supportedValuesOf('timeZone') : [])])];
  const tz = select('tz', zones, zone());
  tz.addEventListener('change', () => { localStorage.setItem('relay.tz', tz.value); route(); });
  append(who, [
    h('label', { class: 'check' }, 'Time zone', tz),
    h('span', { id: 'me' }, `${me.username} (${me.role}), tenant ${me.tenant}`),
    h('button', { class: 'secondary', type: 'button', onclick: logout }, 'Log out'),
  ]);
}
function logout() { sessionStorage.removeItem('relay.token'); me = null; location.hash = '#/login'; }

async function route() {
  timers.forEach(clearInterval); timers = [];
  hideBanner();
  const id = (location.hash.replace(/^#\/?/, '').split('?')[0]) || 'dashboard';
  if (!token()) { me = null; renderChrome(); return login(); }
  if (!me) {
    try { me = await get('/api/v1/auth/me'); } catch (err) {
      if (!token()) { renderChrome(); return login(describe(err)); }
      clear(main).append(errorBox(err)); return;
    }
  }
  if (id === 'login') { location.hash = '#/dashboard'; return; }
  const page = PAGES[id];
  renderChrome(id);
  clear(main);
  if (!page) { main.append(h('h1', {}, 'Not found'), h('p', {}, 'No such page. ', h('a', { href: '#/dashboard' }, 'Go to the dashboard'))); return; }
  document.title = page.title + ' · Relay console';
  main.append(h('h1', {}, page.title));
  // Admin pages are not in a user's menu, and reached by URL they say so (the API
  // refuses their calls anyway: the console hides nothing the API would give).
  if (page.admin && !isAdmin()) {
    main.append(h('p', { class: 'error', role: 'alert' }, `${page.title} is for administrators; you are logged in as ${me.username} (role ${me.role}).`));
    return;
  }
  try { await page.render(main); } catch (err) {
    main.append(errorBox(err));
    if (err instanceof ApiError && err.status === 401) { me = null; route(); }
  }
}

function login(message) {
  document.title = 'Log in · Relay console';
  clear(main);
  const err = h('p', { class: 'error', role: 'alert', hidden: !message }, message || '');
  const form = h('form', {},
    field('User name', input('username', { autocomplete: 'username', required: true })),
    field('Password', input('password', { type: 'password', autocomplete: 'current-password', required: true })),
    h('button', { type: 'submit' }, 'Log in'), err);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const v = formValues(form);
    try {
      const r = await api('POST', '/api/v1/auth/login', { username: v.username, password: v.password });
      sessionStorage.setItem('relay.token', r.token);
      me = r.user;
      if (location.hash === '#/dashboard' || location.hash === '' ) route(); else location.hash = '#/dashboard';
    } catch (e2) { err.hidden = false; err.textContent = describe(e2); }
  });
  main.append(h('div', { class: 'login card' }, h('h1', {}, 'Log in'),
    h('p', { class: 'muted' }, 'Administrators manage accounts, keys and tenants; users see their own keys, usage and statements.'), form));
  form.querySelector('input').focus();
}

// ---------------------------------------------------------------- dashboard
async function dashboard(root) {
  const form = h('form', { class: 'filters' },
    field('From', input('from', { type: 'date', value: today(-13) })),
    field('To', input('to', { type: 'date', value: today() })),
    field('Granularity', select('granularity', [['hour', 'hour'], ['day', 'day'], ['month', 'month']], 'day')),
    field('Show', select('metric', [['requests', 'requests'], ['tokens', 'tokens'], ['cost', 'cost (USD)']], 'requests')),
    h('button', { type: 'submit' }, 'Show'));
  // Hours suit a day or two: switching to them narrows a longer range to yesterday and today.
  form.elements.granularity.addEventListener('change', () => {
    const f = form.elements;
    if (f.granularity.value === 'hour' && (new Date(f.to.value) - new Date(f.from.value)) > 86400000) f.from.value = today(-1);
  });
  const out = h('div', {});
  root.append(h('p', { class: 'muted' }, `Hours and days are counted in ${zone()}. Hour granularity takes a range of up to 31 days.`), form, out);
  const draw = async () => {
    clear(out).append(h('p', { class: 'muted' }, 'Loading…'));
    const v = formValues(form);
    const base = { from: v.from, to: v.to, tz: zone() };
    const [series, status, acc, rejections] = await Promise.all([
      get('/api/v1/usage' + qs(Object.assign({ granularity: v.granularity }, base))),
      isAdmin() ? get('/api/v1/status') : null,
      isAdmin() ? allPages('/api/v1/admin/accounts') : null,
      get('/api/v1/usage/rejections' + qs(base)),
    ]);
    const breakdowns = await Promise.all((isAdmin() ? ['model', 'account', 'tenant'] : ['model', 'key']).map(async (by) =>
      [by, (await get('/api/v1/usage' + qs(Object.assign({ granularity: 'total', group_by: by }, base)))).items]));
    clear(out);
    const rows = series.items;
    out.append(h('div', { class: 'stats' },
      stat('requests', int(rows.reduce((s, r) => s + r.requests, 0))),
      stat('tokens', int(rows.reduce((s, r) => s + tokensOf(r), 0))),
      stat('cost', usd(nanosToDecimal(sumNanos(rows)))),
      stat('cache hit ratio', cacheHit(rows)),
      stat('rejected by a limit', int(rejections.total))));
    const metric = v.metric;
    const byPeriod = new Map(rows.map((r) => [r.period, r]));
    const pts = periods(series.from, series.to, v.granularity).map((p) => {
      const r = byPeriod.get(p);
      const x = v.granularity === 'hour' ? p.slice(5).replace('T', ' ') : p;
      if (metric === 'cost') return { x, y: r ? Number(r.cost) : 0, label: usd(r ? r.cost : '0') };
      const n = r ? (metric === 'tokens' ? tokensOf(r) : r.requests) : 0;
      return { x, y: n, label: int(n) };
    });
    out.append(h('h2', {}, `${metric === 'cost' ? 'Cost' : metric === 'tokens' ? 'Tokens' : 'Requests'} per ${v.granularity} (${zone()})`));
    const chartLabel = `${metric} per ${v.granularity}`;
    out.append(rows.length ? h('div', { class: 'card', id: 'usage-chart' }, chart(pts, chartLabel, out.clientWidth - 26))
      : h('p', { class: 'empty', id: 'usage-chart' }, 'No usage in this range yet. Create a key on the Keys page and send a request through the relay.'));
    // Drawn for the width it has: redrawn when the window (a phone turned, a desktop
    // window resized) changes it, so text keeps its size.
    redrawChart = rows.length ? () => {
      const card = document.getElementById('usage-chart');
      if (card && card.clientWidth > 0) card.replaceChildren(chart(pts, chartLabel, card.clientWidth - 26));
    } : null;
    const accountName = new Map((acc || []).map((a) => [a.id, a.name]));
    for (const [by, items] of breakdowns) {
      const name = by === 'key' ? 'api_key' : by;
      const label = (r) => (by === 'account' && accountName.has(r.account) ? `${accountName.get(r.account)} (${r.account})` : r[name] || '—');
      out.append(h('h2', {}, `By ${by}`), table([
        { title: by, value: label, wrap: true },
        { title: 'requests', value: (r) => int(r.requests), num: true },
        { title: 'tokens', value: (r) => int(tokensOf(r)), num: true },
        { title: 'cache hit', value: (r) => cacheHit([r]), num: true },
        { title: 'cost', value: (r) => usd(r.cost), num: true },
      ], items, 'Nothing in this range.'));
    }
    out.append(h('h2', {}, 'Rejections by limit'), h('div', { id: 'rejections' }, table([
      { title: 'limit', value: (r) => r.rejected_by },
      { title: 'requests refused', value: (r) => int(r.requests), num: true },
    ], rejections.items, 'No request was refused by a limit in this range. The Requests page lists each refusal.')));
    if (acc) out.append(h('h2', {}, 'Account health'), accountTiles(acc));
    if (status) out.append(h('h2', {}, 'Event pipeline'), statusView(status));
  };
  form.addEventListener('submit', (e) => { e.preventDefault(); draw().catch((err) => clear(out).append(errorBox(err))); });
  await draw();
}

function utilization(u) {
  const entries = Object.entries(u || {});
  if (!entries.length) return null;
  return h('p', { class: 'muted' }, entries.map(([k, v]) => `${k}: ${typeof v === 'object' ? JSON.stringify(v) : v}`).join(' · '));
}
function accountTiles(list) {
  if (!list.length) return h('p', { class: 'empty' }, 'No upstream accounts yet. Add one on the Accounts page.');
  const grid = h('div', { class: 'grid' });
  for (const a of list) {
    const st = a.status || {};
    const back = h('span', {}, st.until ? countdown(st.until) : '');
    if (st.until) every(1000, () => { back.textContent = countdown(st.until); });
    grid.append(h('div', { class: 'card tile', 'data-account': a.name },
      h('h3', {}, a.name, ' ', statePill(a.enabled ? st.state : 'disabled')),
      st.reason ? h('p', {}, 'Reason: ', st.reason) : null,
      st.until ? h('p', {}, `Back at ${fmtTime(st.until)} (in `, back, ')') : null,
      h('p', { class: 'muted' }, `${int(st.requests)} requests, ${int(st.errors)} errors`),
      st.last_error ? h('p', { class: 'muted' }, 'Last error: ', st.last_error) : null,
      utilization(st.utilization)));
  }
  return grid;
}
function statusView(s) {
  const behind = (s.projections || []).reduce((m, p) => Math.max(m, p.behind), 0);
  return h('div', {}, h('div', { class: 'stats' },
    stat('status', s.status),
    stat('event log head', int(s.event_log.head)),
    stat('projection lag (events)', s.projections ? int(behind) : 'unreadable'),
    stat('publisher queue', int(s.publisher.queue_depth)),
    stat('spooled events', int(s.publisher.spool_events)),
    stat('quarantined events', int(s.publisher.quarantine_events))),
  s.projections ? h('details', {}, h('summary', {}, 'Each projection'), table([
    { title: 'projection', value: (p) => p.projection },
    { title: 'checkpoint', value: (p) => int(p.checkpoint), num: true },
    { title: 'behind', value: (p) => int(p.behind), num: true }], s.projections, '')) : null);
}

// ---------------------------------------------------------------- accounts
async function accounts(root) {
  const [list, groupList] = await Promise.all([allPages('/api/v1/admin/accounts'), allPages('/api/v1/groups')]);
  const groupOptions = [['', '(none)'], ...groupList.map((g) => [String(g.id), g.name])];
  const editor = h('div', {});
  const add = h('form', { class: 'inline card', id: 'add-account' },
    field('Name', input('name', { required: true })),
    field('Upstream URL', input('request_url', { type: 'url', placeholder: 'https://api.anthropic.com' })),
    field('API key', input('secret_key', { type: 'password', required: true, autocomplete: 'off' })),
    field('Priority', input('priority', { type: 'number', value: '0' })),
    field('Weight', input('weight', { type: 'number', value: '1', min: '1' })),
    field('Group', select('group_id', groupOptions, '')),
    field('Concurrency (0 = unlimited)', input('concurrency', { type: 'number', value: '0', min: '0' })),
    field('Proxy URL', input('proxy', { placeholder: 'socks5://…' })),
    h('button', { type: 'submit' }, 'Add API-key account'));
  add.addEventListener('submit', (e) => {
    e.preventDefault();
    const v = formValues(add);
    act(add.querySelector('button'), 'Add account', async () => {
      await api('POST', '/api/v1/admin/accounts', {
        name: v.name, platform_type: 'claude_console', secret_key: v.secret_key, request_url: nonEmpty(v.request_url),
        priority: intOrNull(v.priority), weight: intOrNull(v.weight), group_id: intOrNull(v.group_id),
        concurrency: intOrNull(v.concurrency), proxy: nonEmpty(v.proxy),
      });
      await rerender();
      return `Account ${v.name} added`;
    });
  });
  const edit = (a) => {
    const f = h('form', { class: 'inline card', id: 'edit-account' },
      h('strong', {}, `Edit ${a.name}`),
      field('Priority', input('priority', { type: 'number', value: String(a.priority) })),
      field('Weight', input('weight', { type: 'number', value: String(a.weight), min: '1' })),
      field('Group', select('group_id', groupOptions, a.group_id === null || a.group_id === undefined ? '' : String(a.group_id))),
      field('Concurrency', input('concurrency', { type: 'number', value: String(a.concurrency), min: '0' })),
      field('Proxy URL (empty = none)', input('proxy', { value: a.proxy || '' })),
      h('button', { type: 'submit' }, 'Save'),
      h('button', { type: 'button', class: 'secondary', onclick: () => clear(editor) }, 'Cancel'));
    f.addEventListener('submit', (e) => {
      e.preventDefault();
      const v = formValues(f);
      act(f.querySelector('button'), 'Save account', async () => {
        await api('PATCH', `/api/v1/admin/accounts/${encodeURIComponent(a.id)}`, {
          priority: intOrNull(v.priority), weight: intOrNull(v.weight), group_id: intOrNull(v.group_id),
          concurrency: intOrNull(v.concurrency), proxy: nonEmpty(v.proxy),
        });
        await rerender();
        return `Account ${a.name} saved`;
      });
    });
    clear(editor).append(f);
    f.querySelector('input').focus();
  };
  const listBox = h('div', {});
  const rerender = async () => { fill(await allPages('/api/v1/admin/accounts')); };
  const fill = (items) => clear(listBox).append(table([
    { title: 'name', value: (a) => a.name },
    { title: 'kind', value: (a) => a.kind },
    { title: 'state', value: (a) => statePill(a.enabled ? (a.status && a.status.state) : 'disabled') },
    { title: 'reason', value: (a) => (a.status && a.status.reason) || '', wrap: true },
    { title: 'upstream', value: (a) => a.request_url, wrap: true },
    { title: 'prio', value: (a) => a.priority, num: true },
    { title: 'weight', value: (a) => a.weight, num: true },
    { title: 'group', value: (a) => a.group || '—' },
    { title: 'conc.', value: (a) => a.concurrency || '∞', num: true },
    { title: 'proxy', value: (a) => a.proxy || '—' },
    { title: 'utilisation (5 h / 7 d)', value: (a) => utilization(a.status && a.status.utilization) || '—', wrap: true },
    { title: 'actions', value: (a) => h('div', { class: 'actions' },
      h('button', { type: 'button', class: 'secondary', onclick: () => edit(a) }, 'Edit'),
      h('button', { type: 'button', class: 'secondary', onclick: (e) => act(e.currentTarget, `Test ${a.name}`, async () => {
        const r = await api('POST', `/api/v1/admin/accounts/${encodeURIComponent(a.id)}/test`, {});
        if (!r.ok) throw new Error(`upstream refused: ${r.error || 'unknown error'}`);
        return `Test ${a.name}: ok in ${r.latency_ms} ms (${r.model}, ${r.input_tokens} in / ${r.output_tokens} out)`;
      }) }, 'Test'),
      h('button', { type: 'button', class: 'secondary', onclick: (e) => act(e.currentTarget, `Reset ${a.name}`, async () => {
        await api('POST', `/api/v1/admin/accounts/${encodeURIComponent(a.id)}/reset`); await rerender(); return `${a.name}: health reset`;
      }) }, 'Reset'),
      h('button', { type: 'button', class: a.enabled ? 'danger' : 'secondary', onclick: (e) => act(e.currentTarget, a.enabled ? 'Disable' : 'Enable', async () => {
        await api('POST', `/api/v1/admin/accounts/${encodeURIComponent(a.id)}/${a.enabled ? 'disable' : 'enable'}`); await rerender();
        return `${a.name} ${a.enabled ? 'disabled' : 'enabled'}`;
      }) }, a.enabled ? 'Disable' : 'Enable')) },
  ], items, 'No upstream accounts yet: add an API-key account below, or sign in a subscription with the OAuth wizard.'));
  fill(list);
  root.append(listBox, editor, h('h2', {}, 'Add an API-key account'), add, h('h2', {}, 'Add a subscription account (OAuth)'), oauthWizard(rerender));
}

function oauthWizard(rerender) {
  const box = h('div', { class: 'card' });
  const start = h('button', { type: 'button' }, '1. Start a login');
  const step2 = h('div', { hidden: true });
  start.addEventListener('click', () => act(start, 'Start OAuth login', async () => {
    const r = await api('POST', '/oauth/auth-url', {});
    const f = h('form', { class: 'inline' },
      field('Account name', input('account_name', { required: true })),
      field('Pasted code#state', input('authorization_code', { required: true, autocomplete: 'off' })),
      h('button', { type: 'submit' }, '3. Add the account'));
    f.addEventListener('submit', (e) => {
      e.preventDefault();
      const v = formValues(f);
      act(f.querySelector('button'), 'Finish OAuth login', async () => {
        await api('POST', '/oauth/token', { authorization_code: v.authorization_code, state: r.state, account_name: v.account_name });
        clear(step2); step2.hidden = true; await rerender();
        return `Account ${v.account_name} added`;
      });
    });
    clear(step2).append(
      h('p', {}, '2. ', h('a', { href: r.auth_url, target: '_blank', rel: 'noopener noreferrer' }, 'Open the Claude sign-in page'),
        `, sign in, and paste the code it shows (valid until ${fmtTime(r.expires_at)}).`), f);
    step2.hidden = false;
    return 'Login started: open the sign-in page';
  }));
  return append(box, [h('p', { class: 'muted' }, 'Signs in a Claude subscription with PKCE; the relay keeps and refreshes its tokens.'), start, step2]);
}

// ---------------------------------------------------------------- keys
async function keys(root) {
  const [userList, groupList] = isAdmin()
    ? await Promise.all([allPages('/api/v1/admin/users'), allPages('/api/v1/groups')]) : [[], []];
  const shown = h('div', { id: 'new-key' });
  const create = h('form', { class: 'inline card', id: 'create-key' },
    field('Name', input('name', { required: true })),
    isAdmin() ? field('Owner', select('user_id', [['', '(myself)'], ...userList.map((u) => [u.id, `${u.username} (${u.tenant})`])], '')) : null,
    isAdmin() ? field('Account group', select('group_id', [['', '(accounts without a group)'], ...groupList.map((g) => [String(g.id), g.name])], '')) : null,
    field('Expires (optional)', input('expires_at', { type: 'date' })),
    h('button', { type: 'submit' }, 'Create key'));
  const listBox = h('div', {});
  const detail = h('div', { id: 'key-detail' });
  const rerender = async () => fill(await allPages('/api/v1/api-keys', { include_revoked: true }));
  create.addEventListener('submit', (e) => {
    e.preventDefault();
    const v = formValues(create);
    act(create.querySelector('button'), 'Create key', async () => {
      const r = await api('POST', '/api/v1/api-keys', {
        name: v.name, user_id: nonEmpty(v.user_id), group_id: intOrNull(v.group_id),
        expires_at: v.expires_at ? `${v.expires_at} 23:59:59` : null,
      });
      const code = h('code', { id: 'new-key-secret' }, r.key);
      const copy = h('button', { type: 'button', class: 'secondary' }, 'Copy');
      copy.addEventListener('click', async () => {
        try { await navigator.clipboard.writeText(r.key); copy.textContent = 'Copied'; } catch (err) {
          const range = document.createRange(); range.selectNodeContents(code);
          getSelection().removeAllRanges(); getSelection().addRange(range);
          showBanner(`Copy failed (${describe(err)}): the key is selected, copy it by hand`);
        }
      });
      clear(shown).append(h('div', { class: 'secret', role: 'status' },
        h('strong', {}, `Key “${r.api_key.name}”:`), code, copy,
        h('span', { class: 'muted' }, 'Shown once: it is stored hashed and cannot be shown again.')));
      create.reset();
      await rerender();
      return `Key ${r.api_key.name} created`;
    });
  });
  const limits = async (k) => {
    const states = await get(`/api/v1/api-keys/${encodeURIComponent(k.id)}/limits`);
    const f = budgetForm(k, rerender);
    clear(detail).append(h('div', { class: 'card' }, h('h2', {}, `Limits of ${k.name}`),
      states.length ? states.map(limitBar) : h('p', { class: 'empty' }, 'No limits on this key: set a budget below to cap its spending.'),
      f));
    detail.scrollIntoView({ block: 'nearest' });
  };
  const fill = (items) => clear(listBox).append(table([
    { title: 'name', value: (k) => k.name },
    { title: 'key', value: (k) => h('code', {}, k.key) },
    { title: 'tenant', value: (k) => k.tenant },
    { title: 'group', value: (k) => k.group || '—' },
    { title: 'state', value: (k) => k.revoked ? pill('revoked', 'bad') : k.enabled ? pill('enabled', 'ok') : pill('disabled', 'off') },
    { title: 'budgets', value: (k) => budgets(k.limits) || '—', wrap: true },
    { title: `created (${zone()})`, value: (k) => fmtTime(k.created_at) },
    { title: 'expires', value: (k) => fmtTime(k.expires_at) },
    { title: 'actions', value: (k) => k.revoked ? '' : h('div', { class: 'actions' },
      h('button', { type: 'button', class: 'secondary', onclick: (e) => act(e.currentTarget, 'Limits', async () => { await limits(k); return `Limits of ${k.name}`; }) }, 'Limits'),
      h('button', { type: 'button', class: 'secondary', onclick: (e) => act(e.currentTarget, k.enabled ? 'Disable key' : 'Enable key', async () => {
        await api('PATCH', `/api/v1/api-keys/${encodeURIComponent(k.id)}`, { enabled: !k.enabled }); await rerender();
        return `Key ${k.name} ${k.enabled ? 'disabled' : 'enabled'}`;
      }) }, k.enabled ? 'Disable' : 'Enable'),
      h('button', { type: 'button', class: 'danger', onclick: (e) => {
        if (!confirm(`Revoke key ${k.name} for good?`)) return;
        act(e.currentTarget, 'Revoke key', async () => { await api('DELETE', `/api/v1/api-keys/${encodeURIComponent(k.id)}`); await rerender(); return `Key ${k.name} revoked`; });
      } }, 'Revoke')) },
  ], items, 'No keys yet: create one above, then set ANTHROPIC_BASE_URL to this relay and ANTHROPIC_API_KEY to the key.'));
  await rerender();
  root.append(create, shown, listBox, detail);
}
function budgets(l) {
  const parts = [];
  for (const k of ['daily', 'weekly', 'monthly', 'total']) if (l && l[`${k}_budget_usd`]) parts.push(`${k} ${usd(l[`${k}_budget_usd`])}`);
  if (l && l.rpm) parts.push(`${l.rpm} rpm`);
  if (l && l.max_concurrency) parts.push(`${l.max_concurrency} at once`);
  return parts.join(' · ');
}
function limitBar(s) {
  const value = Number(s.value), used = Number(s.used) + Number(s.reserved);
  const pct = value > 0 ? Math.min(100, 100 * used / value) : 100;
  const money = s.limit.endsWith('_usd');
  const fmt = (v) => (money ? usd(v) : v);
  return h('div', { class: 'limit', 'data-limit': s.limit },
    h('div', {}, h('strong', {}, s.limit.replaceAll('_', ' ')), `: ${fmt(s.used)} used, ${fmt(s.reserved)} reserved, ${fmt(s.remaining)} remaining of ${fmt(s.value)}`),
    h('progress', { max: '100', value: pct.toFixed(1), 'aria-label': `${s.limit} used` }),
    s.resets_at ? h('div', { class: 'muted' }, `resets ${fmtTime(s.resets_at)} (${zone()})`) : null);
}
function budgetForm(k, rerender) {
  const l = k.limits || {};
  const f = h('form', { class: 'inline' },
    ['daily', 'weekly', 'monthly', 'total'].map((p) => field(`${p} budget (USD)`, input(`${p}_budget_usd`, { inputmode: 'decimal', value: l[`${p}_budget_usd`] || '', placeholder: 'none' }))),
    h('button', { type: 'submit' }, 'Save budgets'));
  f.addEventListener('submit', (e) => {
    e.preventDefault();
    const v = formValues(f);
    act(f.querySelector('button'), 'Save budgets', async () => {
      const body = {};
      for (const p of ['daily', 'weekly', 'monthly', 'total']) body[`${p}_budget_usd`] = nonEmpty(v[`${p}_budget_usd`]);
      await api('PATCH', `/api/v1/api-keys/${encodeURIComponent(k.id)}`, body);
      await rerender();
      return `Budgets of ${k.name} saved`;
    });
  });
  return f;
}

// ---------------------------------------------------------------- users, tenants, groups
async function users(root) {
  const listBox = h('div', {});
  const rerender = async () => clear(listBox).append(table([
    { title: 'user name', value: (u) => u.username },
    { title: 'e-mail', value: (u) => u.email },
    { title: 'role', value: (u) => u.role },
    { title: 'tenant', value: (u) => u.tenant },
    { title: 'state', value: (u) => (u.enabled ? pill('enabled', 'ok') : pill('disabled', 'off')) },
    { title: `created (${zone()})`, value: (u) => fmtTime(u.created_at) },
    { title: 'actions', value: (u) => h('button', { type: 'button', class: u.enabled ? 'danger' : 'secondary', onclick: (e) => act(e.currentTarget, u.enabled ? 'Disable user' : 'Enable user', async () => {
      await api('PATCH', `/api/v1/admin/users/${encodeURIComponent(u.id)}`, { enabled: !u.enabled }); await rerender();
      return `${u.username} ${u.enabled ? 'disabled' : 'enabled'}`;
    }) }, u.enabled ? 'Disable' : 'Enable') },
  ], await allPages('/api/v1/admin/users'), 'No users yet: create one below.'));
  const f = h('form', { class: 'inline card', id: 'create-user' },
    field('User name', input('username', { required: true, autocomplete: 'off' })),
    field('E-mail', input('email', { type: 'email', required: true })),
    field('Password (8+ characters)', input('password', { type: 'password', required: true, minlength: '8', autocomplete: 'new-password' })),
    field('Role', select('role', ['user', 'admin'], 'user')),
    field('Tenant (empty = a new one)', input('tenant', { placeholder: 'tenant_…' })),
    h('button', { type: 'submit' }, 'Create user'));
  f.addEventListener('submit', (e) => {
    e.preventDefault();
    const v = formValues(f);
    act(f.querySelector('button'), 'Create user', async () => {
      await api('POST', '/api/v1/admin/users', { username: v.username, email: v.email, password: v.password, role: v.role, tenant: nonEmpty(v.tenant) });
      f.reset(); await rerender();
      return `User ${v.username} created`;
    });
  });
  await rerender();
  root.append(listBox, h('h2', {}, 'Create a user'), f);
}

async function tenants(root) {
  const listBox = h('div', {});
  const editor = h('div', {});
  const rerender = async () => clear(listBox).append(table([
    { title: 'id', value: (t) => t.id },
    { title: 'name', value: (t) => t.name },
    { title: 'monthly budget', value: (t) => usd(t.monthly_budget_usd) },
    { title: 'budget zone', value: (t) => t.timezone || '(billing zone)' },
    { title: `created (${zone()})`, value: (t) => fmtTime(t.created_at) },
    { title: 'actions', value: (t) => h('div', { class: 'actions' },
      h('button', { type: 'button', class: 'secondary', onclick: () => edit(t) }, 'Budget'),
      h('a', { href: `#/statements?tenant=${encodeURIComponent(t.id)}` }, 'Statement')) },
  ], await allPages('/api/v1/admin/tenants'), 'No tenants yet: creating a user creates their tenant.'));
  const edit = (t) => {
    const f = h('form', { class: 'inline card' }, h('strong', {}, `Tenant ${t.id}`),
      field('Monthly budget (USD, empty = none)', input('monthly_budget_usd', { inputmode: 'decimal', value: t.monthly_budget_usd || '' })),
      field('Budget zone (IANA, empty = billing zone)', input('timezone', { value: t.timezone || '' })),
      h('button', { type: 'submit' }, 'Save'));
    f.addEventListener('submit', (e) => {
      e.preventDefault();
      const v = formValues(f);
      act(f.querySelector('button'), 'Save tenant', async () => {
        await api('PATCH', `/api/v1/admin/tenants/${encodeURIComponent(t.id)}`, { monthly_budget_usd: nonEmpty(v.monthly_budget_usd), timezone: nonEmpty(v.timezone) });
        clear(editor); await rerender(); return `Tenant ${t.id} saved`;
      });
    });
    clear(editor).append(f);
  };
  await rerender();
  root.append(listBox, editor);
}

async function groups(root) {
  const listBox = h('div', {});
  const rerender = async () => clear(listBox).append(table([
    { title: 'id', value: (g) => g.id, num: true },
    { title: 'name', value: (g) => g.name },
    { title: 'remark', value: (g) => g.remark, wrap: true },
    { title: 'accounts', value: (g) => g.accounts, num: true },
    { title: 'keys', value: (g) => g.keys, num: true },
  ], await allPages('/api/v1/groups'), 'No groups: accounts and keys without a group serve each other. Create a group to dedicate accounts to some keys.'));
  const f = h('form', { class: 'inline card' },
    field('Name', input('name', { required: true })), field('Remark', input('remark')),
    h('button', { type: 'submit' }, 'Create group'));
  f.addEventListener('submit', (e) => {
    e.preventDefault();
    const v = formValues(f);
    act(f.querySelector('button'), 'Create group', async () => {
      await api('POST', '/api/v1/groups', { name: v.name, remark: v.remark }); f.reset(); await rerender(); return `Group ${v.name} created`;
    });
  });
  await rerender();
  root.append(listBox, h('h2', {}, 'Create a group'), f);
}

// ---------------------------------------------------------------- usage explorer
const USAGE_COLUMNS = ['period', 'tenant', 'api_key', 'account', 'model', 'requests', 'input_tokens', 'output_tokens',
  'cache_read_tokens', 'cache_write_5m_tokens', 'cache_write_1h_tokens', 'cost', 'fallback_requests'];
async function usage(root) {
  const f = h('form', { class: 'filters card', id: 'usage-filters' },
    field('From', input('from', { type: 'date', value: today(-29) })),
    field('To', input('to', { type: 'date', value: today() })),
    field('Granularity', select('granularity', ['hour', 'day', 'month', 'year', 'total'], 'day')),
    h('fieldset', { class: 'filters' }, h('legend', {}, 'Group by'),
      ['tenant', 'key', 'account', 'model'].map((g) => h('label', { class: 'check' }, h('input', { type: 'checkbox', name: 'group_by', value: g }), g))),
    isAdmin() ? field('Tenant', input('tenant')) : null,
    field('Key id', input('api_key')),
    isAdmin() ? field('Account', input('account')) : null,
    field('Model', input('model')),
    h('button', { type: 'submit' }, 'Show'));
  const out = h('div', {});
  let last = null;
  const csv = h('button', { type: 'button', class: 'secondary', id: 'usage-csv', disabled: true }, 'Export CSV');
  csv.addEventListener('click', () => { if (last) download(`usage-${last.from}-${last.to}.csv`, 'text/csv', toCsv(USAGE_COLUMNS, last.items)); });
  const run = async () => {
    const v = formValues(f);
    last = await get('/api/v1/usage' + qs({ from: v.from, to: v.to, granularity: v.granularity, group_by: v.group_by.join(','),
      tz: zone(), tenant: v.tenant, api_key: v.api_key, account: v.account, model: v.model }));
    csv.disabled = false;
    const rows = last.items;
    clear(out).append(
      h('p', { class: 'muted' }, `${rows.length} ${rows.length === 1 ? 'row' : 'rows'}, ${last.from} to ${last.to}, days in ${zone()}. The export holds every row of the answer.`),
      h('div', { class: 'stats' }, stat('requests', int(rows.reduce((s, r) => s + r.requests, 0))),
        stat('cost', usd(nanosToDecimal(sumNanos(rows)))), stat('cache hit ratio', cacheHit(rows))),
      table([
        { title: 'period', value: (r) => r.period },
        ...['tenant', 'api_key', 'account', 'model'].filter((c) => rows.some((r) => r[c])).map((c) => ({ title: c, value: (r) => r[c] || '—' })),
        { title: 'requests', value: (r) => int(r.requests), num: true },
        { title: 'input', value: (r) => int(r.input_tokens), num: true },
        { title: 'output', value: (r) => int(r.output_tokens), num: true },
        { title: 'cache read', value: (r) => int(r.cache_read_tokens), num: true },
        { title: 'cache write', value: (r) => int(r.cache_write_5m_tokens + r.cache_write_1h_tokens), num: true },
        { title: 'cost', value: (r) => usd(r.cost), num: true },
      ], rows, 'No usage matches: widen the dates or clear a filter.'));
  };
  f.addEventListener('submit', (e) => { e.preventDefault(); run().catch((err) => clear(out).append(errorBox(err))); });
  root.append(f, h('div', { class: 'actions' }, csv), out);
  await run();
}

// ---------------------------------------------------------------- statements
async function statements(root) {
  const params = new URLSearchParams(location.hash.split('?')[1] || '');
  const tenantList = isAdmin() ? await allPages('/api/v1/admin/tenants') : [];
  const f = h('form', { class: 'filters card', id: 'statement-form' },
    isAdmin() ? field('Tenant', select('tenant', tenantList.map((t) => [t.id, `${t.name} (${t.id})`]), params.get('tenant') || (tenantList[0] && tenantList[0].id)))
      : h('p', {}, `Tenant ${me.tenant}`),
    field('Month (UTC)', input('month', { type: 'month', value: params.get('month') || thisMonth() })),
    h('button', { type: 'submit' }, 'Show'));
  const out = h('div', { id: 'statement' });
  const run = async () => {
    const v = formValues(f);
    const q = { tenant: v.tenant, month: v.month };
    const st = await get('/api/v1/statements' + qs(q));
    const t = st.totals;
    const dl = h('button', { type: 'button', class: 'secondary' }, 'Download CSV');
    dl.addEventListener('click', () => act(dl, 'Download', async () => {
      download(`statement-${st.tenant}-${st.month}.csv`, 'text/csv', await request('GET', '/api/v1/statements' + qs(Object.assign({ format: 'csv' }, q))));
      return 'Statement downloaded';
    }));
    const dj = h('button', { type: 'button', class: 'secondary' }, 'Download JSON');
    dj.addEventListener('click', () => download(`statement-${st.tenant}-${st.month}.json`, 'application/json', JSON.stringify(st, null, 2)));
    const ids = (l) => l.event_ids.length ? h('details', {}, h('summary', {}, `${l.event_ids.length} events`), h('code', { class: 'ids' }, l.event_ids.join(' '))) : '—';
    append(clear(out), [
      h('div', { class: 'stats' }, stat('total', h('span', { id: 'statement-total' }, `${t.cost} ${st.currency}`)),
        stat('requests', int(t.requests)), stat('input tokens', int(t.input_tokens)), stat('output tokens', int(t.output_tokens))),
      h('div', { class: 'actions' }, dl, dj),
      h('h2', {}, `Token lines, ${st.tenant}, ${st.month}`),
      table([
        { title: 'model', value: (l) => l.model },
        { title: 'prices', value: (l) => `${l.price_version} ${l.price_key}${l.priced_by_fallback ? ' (fallback)' : ''}` },
        { title: 'requests', value: (l) => int(l.requests), num: true },
        { title: 'input', value: (l) => int(l.input_tokens), num: true },
        { title: 'output', value: (l) => int(l.output_tokens), num: true },
        { title: 'cache read', value: (l) => int(l.cache_read_tokens), num: true },
        { title: 'cache write 5m / 1h', value: (l) => `${int(l.cache_write_5m_tokens)} / ${int(l.cache_write_1h_tokens)}`, num: true },
        { title: 'cost', value: (l) => `${l.cost} ${st.currency}`, num: true },
        { title: 'events', value: ids, wrap: true },
      ], st.lines, 'Nothing billed this month: usage appears here once requests go through a key of this tenant.'),
      st.server_tool_lines.length ? [h('h2', {}, 'Server tools'), table([
        { title: 'tool', value: (l) => l.tool },
        { title: 'uses', value: (l) => int(l.uses), num: true },
        { title: 'unit price', value: (l) => `${l.unit_price} ${st.currency}`, num: true },
        { title: 'cost', value: (l) => `${l.cost} ${st.currency}`, num: true },
        { title: 'events', value: ids, wrap: true }], st.server_tool_lines, '')] : null]);
  };
  f.addEventListener('submit', (e) => { e.preventDefault(); run().catch((err) => clear(out).append(errorBox(err))); });
  root.append(f, out);
  if (isAdmin() && !tenantList.length) { out.append(h('p', { class: 'empty' }, 'No tenants yet: create a user first.')); return; }
  await run().catch((err) => clear(out).append(errorBox(err)));
}

// ---------------------------------------------------------------- request and audit logs
// A cursor-paged log: filters, a table, and "Load more" (`before_position`).
async function cursorLog(root, path, filters, columns, empty) {
  const f = h('form', { class: 'filters card' }, filters, h('button', { type: 'submit' }, 'Show'));
  const out = h('div', {});
  const more = h('button', { type: 'button', class: 'secondary', hidden: true }, 'Load more');
  let items = [], next = null;
  const load = async (reset) => {
    const v = formValues(f);
    for (const k of ['from', 'to']) if (v[k]) v[k] = new Date(v[k]).toISOString();
    if (reset) { items = []; next = null; }
    const r = await get(path + qs(Object.assign(v, { limit: 100, before_position: next })));
    items.push(...r.items);
    next = r.next_before_position;
    more.hidden = next === null || next === undefined;
    clear(out).append(table(columns, items, empty));
  };
  f.addEventListener('submit', (e) => { e.preventDefault(); load(true).catch((err) => clear(out).append(errorBox(err))); });
  more.addEventListener('click', () => act(more, 'Load more', async () => { await load(false); return `${items.length} entries shown`; }));
  root.append(f, out, more);
  await load(true);
}
// The limits a refusal names (`request.finished.rejected_by`).
const LIMITS = ['rpm', 'max_concurrency', 'daily_budget_usd', 'weekly_budget_usd', 'monthly_budget_usd',
  'total_budget_usd', 'tenant_monthly_budget_usd', 'allowed_models', 'allowed_ips', 'limits_unavailable'];
function requests(root) {
  return cursorLog(root, '/api/v1/logs', [
    isAdmin() ? field('Tenant', input('tenant')) : null,
    field('Key id', input('api_key')),
    isAdmin() ? field('Account', input('account')) : null,
    field('Model', input('model')),
    field('Outcome', select('outcome', [['', '(any)'], 'completed', 'client_disconnected', 'upstream_error', 'rejected', 'relay_error'], '')),
    field('Request id', input('request_id')),
    field('Refused by limit', select('rejected_by', [['', '(any)'], ...LIMITS], '')),
    field(`From (${browserZone()})`, input('from', { type: 'datetime-local' })),
    field(`To (${browserZone()})`, input('to', { type: 'datetime-local' })),
  ], [
    { title: `time (${zone()})`, value: (r) => fmtTime(r.occurred_at) },
    { title: 'model', value: (r) => r.model },
    { title: 'status', value: (r) => r.status, num: true },
    { title: 'outcome', value: (r) => r.outcome + (r.rejected_by ? ` by ${r.rejected_by}` : '') + (r.error_type ? ` (${r.error_type})` : '') },
    { title: 'tokens in/out', value: (r) => `${int(r.input_tokens)} / ${int(r.output_tokens)}`, num: true },
    { title: 'cost', value: (r) => usd(r.cost), num: true },
    { title: 'latency', value: (r) => `${(r.latency_us / 1000).toFixed(0)} ms`, num: true },
    { title: 'tenant', value: (r) => r.tenant },
    { title: 'key', value: (r) => r.api_key },
    { title: 'account', value: (r) => r.account || '—' },
    { title: 'request id', value: (r) => r.request_id },
  ], 'No requests match: requests appear here a moment after they finish.');
}
function audit(root) {
  return cursorLog(root, '/api/v1/admin/audit', [
    field('Kind', select('kind', [['', '(any)'], 'admin.action', 'auth.failed'], '')),
    field('Actor', input('actor')),
    field(`From (${browserZone()})`, input('from', { type: 'datetime-local' })),
    field(`To (${browserZone()})`, input('to', { type: 'datetime-local' })),
  ], [
    { title: `time (${zone()})`, value: (r) => fmtTime(r.occurred_at) },
    { title: 'kind', value: (r) => r.kind },
    { title: 'actor', value: (r) => r.actor || '—' },
    { title: 'action', value: (r) => r.action || r.reason },
    { title: 'target', value: (r) => r.target || r.endpoint || '—' },
    { title: 'summary', value: (r) => r.summary || [r.key_prefix, r.client_addr].filter(Boolean).join(' from '), wrap: true },
    { title: 'event', value: (r) => h('code', { class: 'ids' }, r.event_id) },
  ], 'No audit entries match.');
}

window.addEventListener('hashchange', route);
route();
