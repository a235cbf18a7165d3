// The console's acceptance flows in headless Chromium (playwright-core, Debian's
// chromium). Run by relay/tests/api/console.rs, which starts the relay and the mock
// upstream and passes:
//
//   RELAY_URL, ADMIN_USER, ADMIN_PASSWORD, MOCK_URL, SCREENSHOT_DIR, CHROMIUM_BIN
//
// Admin flow: log in, add an API-key account against the mock, create a user and a key,
// send traffic with the key, see the dashboard chart and the statement change.
// Tenant flow: the user logs in, sees only their tenant, and cannot reach admin pages
// by the menu or by URL. Every page is saved at 1280 px and 375 px; `console.png` (the
// dashboard after the traffic) is the README's `docs/console.png`. Prints one line per
// step; exits non-zero on the first failure.
'use strict';
const { chromium } = require('playwright-core');
const fs = require('node:fs');
const path = require('node:path');

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const RELAY = env('RELAY_URL').replace(/\/$/, '');
const ADMIN_USER = env('ADMIN_USER');
const ADMIN_PASSWORD = env('ADMIN_PASSWORD');
const MOCK_URL = env('MOCK_URL');
const SHOTS = env('SCREENSHOT_DIR');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const ADMIN_PAGES = ['dashboard', 'accounts', 'keys', 'users', 'tenants', 'groups', 'usage', 'statements', 'requests', 'audit'];
const TENANT_PAGES = ['dashboard', 'keys', 'usage', 'statements', 'requests'];
const ADMIN_ONLY = ['accounts', 'users', 'tenants', 'groups', 'audit'];
const BOB = { username: 'bob', password: 'bob-password-123', tenant: 'tenant_bob' };

const step = (msg) => console.log(`ok - ${msg}`);
function check(cond, msg) {
  if (!cond) throw new Error(`check failed: ${msg}`);
}
// Polls `fn` until it returns a truthy value (or throws after `ms`).
async function until(what, fn, ms = 30000) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) { last = e; }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? ': ' + last.message : ''}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

// A page that fails the run on a script error or a Content-Security-Policy violation.
async function newPage(browser, problems) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
  const page = await context.newPage();
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(m.text())) problems.push(`CSP: ${m.text()}`);
  });
  return page;
}

async function login(page, username, password) {
  await page.goto(`${RELAY}/console`);
  await page.getByLabel('User name').fill(username);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.locator('#me').waitFor();
}

async function open(page, id) {
  const url = `${RELAY}/console#/${id}`;
  // The same URL again is a same-document navigation: reload to read afresh.
  if (page.url() === url) await page.reload(); else await page.goto(url);
  await settle(page, id);
}

// Waits until the page has rendered: a heading, no placeholder, the network quiet.
async function settle(page, id) {
  await page.locator('main h1').waitFor();
  // Loaded: the "Loading…" placeholder is gone and the page's first request answered.
  await until(`page ${id}`, async () => (await page.locator('main h1').innerText()) !== 'Log in' && (await page.locator('main .muted', { hasText: 'Loading…' }).count()) === 0);
  await page.waitForLoadState('networkidle');
}

// Saves the page at 1280 px and at 375 px (drawn afresh at that width unless `keep`,
// for a page showing something once), and checks nothing overflows the phone width.
async function shoot(page, name, keep) {
  for (const width of [1280, 375]) {
    await page.setViewportSize({ width, height: width === 375 ? 812 : 900 });
    if (width === 375 && !keep) {
      await page.reload();
      await settle(page, name);
    }
    await page.screenshot({ path: path.join(SHOTS, `${name}-${width}.png`), fullPage: true });
    if (width === 375) {
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      check(overflow <= 1, `${name} overflows 375 px by ${overflow} px`);
    }
  }
  await page.setViewportSize({ width: 1280, height: 900 });
}

// Opens every page, checks it shows no error, and saves it at both widths.
async function shootAll(page, who, ids) {
  for (const id of ids) {
    await open(page, id);
    check(await page.locator('main .error').count() === 0, `${who} page ${id} shows an error: ${await page.locator('main').innerText()}`);
    await shoot(page, `${who}-${id}`);
  }
}

async function statementTotal(page, tenant) {
  await open(page, `statements?tenant=${encodeURIComponent(tenant)}`);
  await page.locator('#statement-total').waitFor();
  return page.locator('#statement-total').innerText();
}

async function sendTraffic(key, n) {
  for (let i = 0; i < n; i++) {
    const r = await fetch(`${RELAY}/v1/messages`, {
      method: 'POST',
      headers: { 'x-api-key': key, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'claude-sonnet-4-6', max_tokens: 64, messages: [{ role: 'user', content: `hello ${i}` }] }),
    });
    const text = await r.text();
    check(r.status === 200, `request ${i} through the relay: HTTP ${r.status} ${text}`);
  }
}

// Runs a flow; on failure prints what the page shows and saves it as `failed-<flow>.png`.
async function flow(name, browser, problems, body) {
  const page = await newPage(browser, problems);
  try {
    await body(page);
  } catch (e) {
    const shown = await page.locator('body').innerText().catch(() => '(no page)');
    await page.screenshot({ path: path.join(SHOTS, `failed-${name}.png`), fullPage: true }).catch(() => {});
    console.log(`--- the page when the ${name} flow failed (${page.url()}):\n${shown}\n---`);
    throw e;
  }
  await page.context().close();
}

async function adminFlow(page) {
  await page.goto(`${RELAY}/console`);
  await page.getByLabel('User name').waitFor();
  await shoot(page, 'login', true);
  // A wrong password is refused with the API's message, not swallowed.
  await page.getByLabel('User name').fill(ADMIN_USER);
  await page.getByLabel('Password').fill('wrong-password');
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.locator('main .error').waitFor();
  check(/HTTP 401/.test(await page.locator('main .error').innerText()), 'a failed login shows the error');
  step('a wrong password shows the API error');

  await login(page, ADMIN_USER, ADMIN_PASSWORD);
  const me = await page.evaluate(async () => (await fetch('/api/v1/auth/me', { headers: { authorization: 'Bearer ' + sessionStorage.getItem('relay.token') } })).json());
  check(me.role === 'admin', 'logged in as an administrator');
  const stored = await page.evaluate(() => ({ local: Object.keys(localStorage), session: Object.keys(sessionStorage) }));
  check(stored.session.join() === 'relay.token' && stored.local.every((k) => k === 'relay.tz'), `only the token is kept: ${JSON.stringify(stored)}`);
  step(`admin logged in (tenant ${me.tenant})`);

  // An empty dashboard says what to do next.
  await open(page, 'dashboard');
  check(/No usage in this range/.test(await page.locator('#usage-chart').innerText()), 'the empty dashboard says what to do');
  const before = await statementTotal(page, me.tenant);
  step(`statement of ${me.tenant} before traffic: ${before}`);

  await open(page, 'accounts');
  const add = page.locator('#add-account');
  await add.getByLabel('Name').fill('mock-a');
  await add.getByLabel('Upstream URL').fill(MOCK_URL);
  await add.getByLabel('API key').fill('sk-ant-api03-console-test');
  await add.getByLabel('Priority').fill('1');
  await add.getByRole('button', { name: 'Add API-key account' }).click();
  await page.locator('td', { hasText: 'mock-a' }).first().waitFor();
  check(await page.locator('td', { hasText: MOCK_URL.replace(/\/$/, '') }).count() >= 1, 'the account points at the mock');
  step('API-key account added against the mock');

  const row = page.locator('tr', { has: page.locator('td', { hasText: 'mock-a' }) });
  await row.getByRole('button', { name: 'Test' }).click();
  await until('the account test', async () => /Test mock-a: ok/.test(await page.locator('#banner').innerText()));
  step('account test answered');
  await row.getByRole('button', { name: 'Edit' }).click();
  await page.locator('#edit-account').getByLabel('Weight').fill('3');
  await page.locator('#edit-account').getByRole('button', { name: 'Save' }).click();
  await until('the edited weight', async () => (await page.locator('#banner').innerText()).includes('saved'));
  const account = await page.evaluate(async () => (await (await fetch('/api/v1/admin/accounts', { headers: { authorization: 'Bearer ' + sessionStorage.getItem('relay.token') } })).json()).items[0]);
  check(account.weight === 3 && account.priority === 1, `the edit reached the API: ${JSON.stringify(account)}`);
  step('account edited (weight 3)');
  await page.getByRole('button', { name: '1. Start a login' }).click();
  const signIn = page.getByRole('link', { name: 'Open the Claude sign-in page' });
  await signIn.waitFor();
  check(/^https:\/\/.*code_challenge=/.test(await signIn.getAttribute('href')), 'the OAuth wizard links to the sign-in page with PKCE');
  check(await page.getByLabel('Pasted code#state').isVisible(), 'the OAuth wizard asks for code#state');
  step('OAuth wizard started (sign-in link and code#state field)');

  await open(page, 'users');
  const cu = page.locator('#create-user');
  await cu.getByLabel('User name').fill(BOB.username);
  await cu.getByLabel('E-mail').fill('bob@example.com');
  await cu.getByLabel('Password (8+ characters)').fill(BOB.password);
  await cu.getByLabel('Tenant (empty = a new one)').fill(BOB.tenant);
  await cu.getByRole('button', { name: 'Create user' }).click();
  await page.locator('td', { hasText: 'bob@example.com' }).waitFor();
  step('user bob created in tenant_bob');

  await open(page, 'keys');
  const ck = page.locator('#create-key');
  await ck.getByLabel('Name').fill('console-key');
  await ck.getByRole('button', { name: 'Create key' }).click();
  await page.locator('#new-key-secret').waitFor();
  const key = await page.locator('#new-key-secret').innerText();
  check(/^sk-/.test(key), `the new key is shown once: ${key.slice(0, 6)}…`);
  check(await page.getByRole('button', { name: 'Copy' }).isVisible(), 'a copy button');
  await shoot(page, 'keys-created', true);
  const keyRow = page.locator('tr', { has: page.locator('td', { hasText: 'console-key' }) });
  await keyRow.getByRole('button', { name: 'Limits' }).click();
  await page.locator('#key-detail').getByLabel('monthly budget (USD)').fill('5.00');
  await page.locator('#key-detail').getByRole('button', { name: 'Save budgets' }).click();
  await until('the budget', async () => (await page.locator('#banner').innerText()).includes('Budgets of console-key saved'));
  step('key created, shown once, monthly budget set');

  await sendTraffic(key, 3);
  step('3 requests sent through the relay with the new key');

  // The projections apply the events a moment later: poll the page, not a fixed sleep.
  await until('the dashboard chart', async () => {
    await open(page, 'dashboard');
    return (await page.locator('#usage-chart svg circle').count()) >= 1 &&
      Number.parseInt(await page.locator('.stat', { hasText: 'requests' }).first().innerText(), 10) >= 3;
  });
  const byModel = await page.locator('table', { hasText: 'claude-sonnet-4-6' }).count();
  check(byModel >= 1, 'the per-model breakdown names the model');
  check(await page.locator('.tile[data-account="mock-a"]').count() === 1, 'a health tile for the account');
  step('dashboard chart shows the traffic');
  await shoot(page, 'dashboard');
  await page.screenshot({ path: path.join(SHOTS, 'console.png') });
  await page.getByLabel('Granularity').selectOption('hour');
  await page.getByRole('button', { name: 'Show', exact: true }).click();
  await until('the hourly chart', async () =>
    (await page.locator('h2', { hasText: 'per hour' }).count()) === 1 && (await page.locator('#usage-chart svg circle').count()) >= 1);
  check(await page.locator('#rejections').count() === 1, 'the dashboard shows rejections by limit');
  await shoot(page, 'dashboard-hourly', true);
  step('dashboard by the hour, with rejections by limit');
  // A key limited to one request a minute: the dashboard counts its refusal under rpm.
  const setRpm = (rpm) => page.evaluate(async (rpm) => {
    const headers = { authorization: 'Bearer ' + sessionStorage.getItem('relay.token'), 'content-type': 'application/json' };
    const keys = await (await fetch('/api/v1/api-keys?limit=100', { headers })).json();
    const k = keys.items.find((x) => x.name === 'console-key');
    return (await fetch(`/api/v1/api-keys/${k.id}`, { method: 'PATCH', headers, body: JSON.stringify({ rpm }) })).status;
  }, rpm);
  check(await setRpm(1) === 200, 'an rpm limit of 1 set on console-key');
  const codes = [];
  for (let i = 0; i < 2; i++) {
    const r = await fetch(`${RELAY}/v1/messages`, {
      method: 'POST',
      headers: { 'x-api-key': key, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'claude-sonnet-4-6', max_tokens: 64, messages: [{ role: 'user', content: 'again' }] }),
    });
    await r.text();
    codes.push(r.status);
  }
  check(codes.includes(429), `the rpm limit refused a request: ${codes}`);
  await until('the rejection on the dashboard', async () => {
    await page.getByRole('button', { name: 'Show', exact: true }).click();
    return /rpm/.test(await page.locator('#rejections table').innerText({ timeout: 2000 }));
  });
  check(await setRpm(null) === 200, 'the rpm limit removed');
  step('a refusal by rpm shows under rejections by limit');

  const after = await until('the statement to change', async () => {
    const t = await statementTotal(page, me.tenant);
    return t !== before ? t : null;
  });
  check(await page.locator('#statement details').count() >= 1, 'statement lines list their event ids');
  step(`statement of ${me.tenant} changed: ${before} -> ${after}`);
  const [statementCsv] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Download CSV' }).click()]);
  const statementText = fs.readFileSync(await statementCsv.path(), 'utf8');
  check(statementText.includes('claude-sonnet-4-6'), `the statement CSV has the line: ${statementText.slice(0, 300)}`);
  step('statement downloaded as CSV');

  await open(page, 'groups');
  await page.getByLabel('Name', { exact: true }).fill('team-a');
  await page.getByRole('button', { name: 'Create group' }).click();
  await page.locator('td', { hasText: 'team-a' }).waitFor();
  step('group created');

  await open(page, 'keys');
  const consoleKey = () => page.locator('tr', { has: page.locator('td', { hasText: 'console-key' }) });
  await consoleKey().getByRole('button', { name: 'Disable' }).click();
  await consoleKey().getByText('disabled', { exact: true }).waitFor();
  await consoleKey().getByRole('button', { name: 'Enable' }).click();
  await consoleKey().getByText('enabled', { exact: true }).waitFor();
  step('key disabled and enabled again');

  await open(page, 'usage');
  await page.locator('#usage-filters').getByLabel('model', { exact: true }).check();
  await page.locator('#usage-filters').getByRole('button', { name: 'Show' }).click();
  await page.locator('td', { hasText: 'claude-sonnet-4-6' }).first().waitFor();
  const [download] = await Promise.all([page.waitForEvent('download'), page.locator('#usage-csv').click()]);
  const csv = fs.readFileSync(await download.path(), 'utf8');
  check(csv.startsWith('period,tenant,api_key') && csv.includes('claude-sonnet-4-6'), `the CSV export holds the rows: ${csv.slice(0, 200)}`);
  step('usage explorer exports CSV');

  await shootAll(page, 'admin', ADMIN_PAGES);
  step('every admin page rendered and saved at 1280 and 375 px');
}

async function tenantFlow(page) {
  await login(page, BOB.username, BOB.password);
  const links = await page.locator('#nav a').allInnerTexts();
  for (const id of ADMIN_ONLY) check(!links.map((l) => l.toLowerCase()).includes(id), `no ${id} link for a user: ${links}`);
  check((await page.locator('#me').innerText()).includes(BOB.tenant), 'the header names the user and tenant');
  step(`bob logged in; menu: ${links.join(', ')}`);

  await open(page, 'keys');
  check(await page.locator('#create-key').getByLabel('Owner').count() === 0, 'a user cannot pick an owner');
  check(await page.locator('td', { hasText: 'console-key' }).count() === 0, "the admin's key is not listed");
  await page.locator('#create-key').getByLabel('Name').fill('bob-key');
  await page.locator('#create-key').getByRole('button', { name: 'Create key' }).click();
  await page.locator('#new-key-secret').waitFor();
  await page.locator('td', { hasText: 'bob-key' }).waitFor();
  const tenants = await page.locator('tbody tr td:nth-child(3)').allInnerTexts();
  check(tenants.length >= 1 && tenants.every((t) => t === BOB.tenant), `only tenant_bob's keys: ${tenants}`);
  step('bob created his own key and sees only his tenant');

  await open(page, 'statements');
  check((await page.locator('#statement-form').innerText()).includes(`Tenant ${BOB.tenant}`), 'the statement is his own');
  check(/^0(\.0+)? /.test(await page.locator('#statement-total').innerText()), "bob's statement is empty");
  step("bob's statement is his own and empty");

  for (const id of ADMIN_ONLY) {
    await page.goto(`${RELAY}/console#/${id}`);
    const title = id[0].toUpperCase() + id.slice(1);
    await page.locator('main .error', { hasText: `${title} is for administrators` }).waitFor();
    const text = await page.locator('main').innerText();
    check(/is for administrators/.test(text) && !/mock-a|bob@example.com/.test(text), `#/${id} is refused: ${text}`);
    if (id === 'accounts') await shoot(page, 'tenant-refused-accounts');
  }
  // And the API the pages would call refuses the user's token.
  const refused = await page.evaluate(async (paths) => Promise.all(paths.map(async (p) =>
    [p, (await fetch(p, { headers: { authorization: 'Bearer ' + sessionStorage.getItem('relay.token') } })).status])),
  ['/api/v1/admin/accounts', '/api/v1/admin/users', '/api/v1/admin/tenants', '/api/v1/admin/audit']);
  check(refused.every(([, s]) => s === 403), `the admin API refuses the user: ${JSON.stringify(refused)}`);
  step('admin pages by URL are refused, and so are their API calls (HTTP 403)');

  await shootAll(page, 'tenant', TENANT_PAGES);
  step('every tenant page rendered and saved at 1280 and 375 px');
}

(async () => {
  fs.mkdirSync(SHOTS, { recursive: true });
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  const problems = [];
  try {
    await flow('admin', browser, problems, adminFlow);
    console.log('admin flow: ok');
    await flow('tenant', browser, problems, tenantFlow);
    console.log('tenant flow: ok');
    check(problems.length === 0, `no script errors or CSP violations: ${problems.join('; ')}`);
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
