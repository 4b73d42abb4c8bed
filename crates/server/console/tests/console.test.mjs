// The Bulkhead web console in a real headless Chromium (Debian's), driven by
// playwright-core. Run by scripts/console-test.sh, which starts the server,
// seeds tenants A (acme), B (globex-…, a canary in every piece of its data)
// and C (initech, refused for a policy, its budget and its rate limit), and
// passes the ids and keys in $SEED. Screenshots go to $ARTIFACTS.
//
// It checks: the security headers; sign-in errors; tenant A's usage charts
// with non-zero data; a run's steps with its tool call; every page A can
// reach (and B's ids typed into the address bar) free of B's canaries, in
// the DOM and in every API response the page received; a tenant_app key
// told which pages need an admin key; no script injection
// from A's own data; the key in sessionStorage only, and gone after sign
// out; B's canaries visible to B (so the sweep could have found them); the
// operator's tenants, spend chart, budgets and refusal counts.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {createRequire} from 'node:module';

const require = createRequire(path.join(process.env.NODE_DIR, 'package.json'));
const {chromium} = require('playwright-core');

const seed = JSON.parse(fs.readFileSync(process.env.SEED, 'utf8'));
const artifacts = process.env.ARTIFACTS;
const base = seed.base;
const started = Date.now();

let passed = 0;
async function step(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
  } catch (e) {
    console.error(`not ok - ${name}`);
    throw e;
  }
  passed += 1;
  console.log(`ok ${passed} - ${name} (${Date.now() - t0} ms)`);
}

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'bulkhead-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
  viewport: {width: 1280, height: 900},
});
context.setDefaultTimeout(20000);

const page = context.pages()[0] || await context.newPage();

// Anything the page does wrong: uncaught exceptions, and CSP violations
// (reported by the browser in the console and as DOM events).
const problems = [];
page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
page.on('console', (msg) => {
  const text = msg.text();
  if (/Content Security Policy|Refused to/i.test(text)) problems.push(`CSP: ${text}`);
  else if (msg.type() === 'error' && !/Failed to load resource/.test(text)) problems.push(`console error: ${text}`);
});
await context.exposeBinding('__bulkheadViolation', (_source, text) => problems.push(`CSP event: ${text}`));
await context.addInitScript(() => {
  document.addEventListener('securitypolicyviolation',
    (e) => window.__bulkheadViolation(`${e.violatedDirective} ${e.blockedURI}`));
});

// Every API response the page received, with who was signed in.
const responses = [];
let signedInAs = null;
page.on('response', async (res) => {
  const url = new URL(res.url());
  if (!url.pathname.startsWith('/v1/')) return;
  const as = signedInAs;
  try {
    responses.push({as, url: url.pathname + url.search, status: res.status(), body: await res.text()});
  } catch {
    responses.push({as, url: url.pathname + url.search, status: res.status(), body: ''});
  }
});

const state = () => page.locator('#main').getAttribute('data-state');

async function settled() {
  await page.waitForFunction(() => ['ready', 'error', 'signin'].includes(document.getElementById('main').dataset.state));
  return state();
}

/** Goes to a console route (#/…) and waits until the page has rendered. */
async function go(hash) {
  await page.evaluate((h) => {
    document.getElementById('main').dataset.state = 'navigating';
    if (location.hash === h) window.dispatchEvent(new HashChangeEvent('hashchange'));
    else location.hash = h;
  }, hash);
  return settled();
}

async function clickAndSettle(locator) {
  await page.evaluate(() => { document.getElementById('main').dataset.state = 'navigating'; });
  await locator.click();
  return settled();
}

async function signIn(key, who) {
  await page.goto(`${base}/console`);
  assert.equal(await settled(), 'signin');
  await page.getByTestId('key-input').fill(key);
  signedInAs = who;
  await page.evaluate(() => { document.getElementById('main').dataset.state = 'navigating'; });
  await page.getByTestId('signin').click();
  assert.equal(await settled(), 'ready', `signing in as ${who}`);
}

async function signOut() {
  await page.getByTestId('signout').click();
  assert.equal(await settled(), 'signin');
  signedInAs = null;
  assert.equal(await page.evaluate(() => sessionStorage.length), 0, 'sign-out forgets the key');
}

async function shot(name) {
  await page.screenshot({path: path.join(artifacts, `${name}.png`), fullPage: true});
}

/** The page as the user could see or inspect it: markup with attributes, and visible text. */
async function pageText() {
  return page.evaluate(() => `${document.documentElement.outerHTML}\n${document.body.innerText}`);
}

function assertNoCanary(text, where) {
  for (const c of seed.b.canaries) {
    assert.ok(!text.includes(c), `${where} shows B's ${JSON.stringify(c)}`);
  }
}

async function barCount(testid) {
  return page.locator(`[data-testid="${testid}"] rect.bar`).evaluateAll(
    (rects) => rects.filter((r) => Number(r.getAttribute('height')) > 0 && Number(r.getAttribute('width')) > 0).length);
}

try {
  await step('the console is served with a strict Content-Security-Policy and security headers', async () => {
    const res = await page.goto(`${base}/console`);
    assert.equal(res.status(), 200);
    const headers = res.headers();
    const csp = headers['content-security-policy'];
    assert.match(csp, /default-src 'self'/);
    assert.match(csp, /script-src 'self'/);
    assert.match(csp, /frame-ancestors 'none'/);
    assert.ok(!csp.includes('unsafe-inline') && !csp.includes('unsafe-eval'), csp);
    assert.equal(headers['x-content-type-options'], 'nosniff');
    assert.equal(headers['referrer-policy'], 'no-referrer');
    for (const asset of ['app.js', 'console.css', 'charts.js']) {
      const r = await page.request.get(`${base}/console/${asset}`);
      assert.equal(r.status(), 200, asset);
      assert.match(r.headers()['content-security-policy'], /default-src 'self'/);
    }
    assert.equal(await settled(), 'signin');
  });

  await step('sign-in refuses what is not a key, and a key the server does not know', async () => {
    await page.getByTestId('key-input').fill('hunter2');
    await page.getByTestId('signin').click();
    await page.waitForFunction(() => document.querySelector('[data-testid=signin-error]').textContent.length > 0);
    assert.match(await page.getByTestId('signin-error').textContent(), /not a Bulkhead API key/);
    const unknown = `bh_tk_000000000000_${'A'.repeat(43)}`;
    await page.getByTestId('key-input').fill(unknown);
    await page.evaluate(() => { document.getElementById('main').dataset.state = 'navigating'; });
    await page.getByTestId('signin').click();
    assert.equal(await settled(), 'signin');
    assert.match(await page.getByTestId('signin-error').textContent(), /does not accept this key/);
    assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  });

  await step('tenant A signs in and sees its usage charts with non-zero data', async () => {
    await signIn(seed.a.key, 'a');
    assert.equal(new URL(page.url()).hash, '#/usage');
    assert.equal(await page.getByTestId('tenant-self').textContent(), seed.a.name);
    for (const chart of ['chart-day', 'chart-model', 'chart-tokens', 'chart-agent']) {
      assert.equal(await page.getByTestId(chart).getAttribute('data-empty'), null, `${chart} is empty`);
      assert.ok(await barCount(chart) > 0, `${chart} has no bars`);
    }
    const total = await page.getByTestId('usage-total').textContent();
    assert.match(total, /^\$\d/);
    assert.notEqual(total.replace(/[$0.,]/g, ''), '', `total cost ${total}`);
    const agents = await page.getByTestId('chart-agent').textContent();
    assert.ok(agents.includes('acme-helper'), 'the agent chart names the agent');
    assert.ok(agents.includes('direct API calls'), 'and the chat completions made without one');
    assert.match(await page.getByTestId('chart-model').textContent(), /builtin\/scripted/);
    assert.match(await page.getByTestId('usage-kinds').textContent(), /llm/);
    await shot('tenant-usage');
  });

  await step('the key lives in sessionStorage only: no localStorage, no cookies', async () => {
    const storage = await page.evaluate(() => ({
      session: Object.keys(sessionStorage).map((k) => [k, sessionStorage.getItem(k)]),
      local: localStorage.length,
      cookie: document.cookie,
    }));
    assert.deepEqual(storage.session, [['bulkhead.console.key', seed.a.key]]);
    assert.equal(storage.local, 0);
    assert.equal(storage.cookie, '');
    assert.deepEqual(await context.cookies(), []);
  });

  await step('A opens a run and sees its steps, with the tool call', async () => {
    assert.equal(await go('#/runs'), 'ready');
    const links = await page.getByTestId('run-link').count();
    assert.ok(links >= 3, `${links} runs listed`);
    assert.equal(await clickAndSettle(page.locator(`a[href="#/runs/${seed.a.run_tool}"]`)), 'ready');
    const steps = await page.getByTestId('steps').textContent();
    assert.match(steps, /model_call/);
    assert.match(steps, /tool_call/);
    assert.match(steps, /calculator/);
    assert.ok(await page.locator('[data-testid=steps] tbody tr').count() >= 3, 'model call, tool call, model call');
    const calls = await page.getByTestId('tool-calls').textContent();
    assert.match(calls, /calculator/);
    assert.match(calls, /6\*7/);
    assert.match(calls, /42/);
    assert.match(await page.getByTestId('run-facts').textContent(), /completed/);
    await shot('tenant-run-steps');
  });

  await step("every page A can reach is free of B's data, and B's ids typed in are not found", async () => {
    const start = ['#/usage', '#/runs', '#/threads', '#/knowledge', '#/keys', '#/audit'];
    const nav = await page.locator('#nav a').evaluateAll((as) => as.map((a) => a.getAttribute('href')));
    const queue = [...new Set([...start, ...nav])];
    const seen = new Set();
    const markers = new Set();
    while (queue.length && seen.size < 80) {
      const hash = queue.shift();
      if (seen.has(hash)) continue;
      seen.add(hash);
      assert.equal(await go(hash), 'ready', `${hash} did not load`);
      const text = await pageText();
      assertNoCanary(text, hash);
      for (const m of seed.a.markers) if (text.includes(m)) markers.add(m);
      const links = await page.locator('#view a[href^="#/"]').evaluateAll((as) => as.map((a) => a.getAttribute('href')));
      for (const l of links) if (!seen.has(l)) queue.push(l);
    }
    for (const must of ['#/threads/', '#/runs/', '#/knowledge/']) {
      assert.ok([...seen].some((h) => h.startsWith(must)), `no ${must}… page was reached`);
    }
    assert.deepEqual([...markers].sort(), [...seed.a.markers].sort(), "A's own data shows (the sweep reads real pages)");
    console.log(`    ${seen.size} pages checked`);

    for (const hash of [`#/runs/${seed.b.run_tool}`, `#/threads/${seed.b.thread1}`, `#/knowledge/${seed.b.kb}`]) {
      assert.equal(await go(hash), 'error', `${hash} should not load for A`);
      const text = await pageText();
      assert.match(text, /Not found/);
      assertNoCanary(text.replaceAll(hash.split('/').pop(), ''), hash);
    }
    await shot('tenant-foreign-id-not-found');

    const mine = responses.filter((r) => r.as === 'a');
    assert.ok(mine.length > 20, `${mine.length} API responses captured`);
    for (const r of mine) {
      // A guessed id in the request path may come back in a 404's message; nothing else may.
      const body = r.status === 404 ? r.body.replaceAll(/[0-9a-f-]{36}/g, '') : r.body;
      assertNoCanary(body, `API response ${r.url}`);
    }
    const failed = mine.filter((r) => r.status >= 400 && !seed.b.canaries.some((c) => r.url.includes(c)));
    assert.deepEqual(failed.map((r) => `${r.status} ${r.url}`), [], 'API calls A made that failed');
  });

  await step("A's own data is shown as text, never run as markup", async () => {
    assert.equal(await go(`#/threads/${seed.a.thread1}`), 'ready');
    const metadata = await page.getByTestId('thread-metadata').textContent();
    assert.ok(metadata.includes('<img src=x onerror=window.__pwned=1>'), metadata);
    assert.equal(await page.evaluate(() => window.__pwned), undefined);
    assert.equal(await page.locator('#view img').count(), 0);
    await shot('tenant-thread');
  });

  await step('A sees its knowledge base with the ingestion status, its keys and a verified audit chain', async () => {
    assert.equal(await go(`#/knowledge/${seed.a.kb}`), 'ready');
    const docs = await page.getByTestId('documents').textContent();
    assert.ok(docs.includes(`doc-${seed.a.markers[0]}.md`), docs);
    assert.match(docs, /ready|failed|processing|queued/);
    await shot('tenant-knowledge');
    assert.equal(await go('#/keys'), 'ready');
    assert.ok((await page.getByTestId('keys').textContent()).includes(seed.a.key_prefix));
    assert.ok(!(await pageText()).includes(seed.a.key), 'a key secret is never shown');
    assert.equal(await go('#/audit'), 'ready');
    assert.equal(await page.getByTestId('audit-verify').getAttribute('data-ok'), 'true');
    assert.match(await page.getByTestId('audit').textContent(), /key\.created/);
    await shot('tenant-audit');
    if (await page.locator('#nav a[href="#/sandbox"]').count()) {
      // The seeded execution ran or was refused; the page shows it either way.
      assert.equal(await go('#/sandbox'), 'ready');
      const rows = await page.locator('[data-testid=sandbox] tbody tr').count();
      // The API's execution, and the agent's run_code call when the seed made one.
      assert.ok(rows >= (seed.a.run_code ? 2 : 1), `${rows} sandbox executions or refusals`);
      assert.match(await page.getByTestId('sandbox-policy').textContent(), /Backend/);
      await shot('tenant-sandbox');
    }
    if (seed.a.run_code) {
      assert.equal(await go(`#/runs/${seed.a.run_code}`), 'ready');
      const steps = await page.getByTestId('steps').textContent();
      assert.match(steps, /run_code/);
      assert.equal(await page.locator('[data-testid=steps] .badge.sandbox').count(), 1, 'the sandbox execution is marked');
      assert.match(await page.getByTestId('tool-calls').textContent(), /print\(6\*7\)/);
      await shot('tenant-run-sandbox');
    }
  });

  await step('sign-out forgets the key and shows nothing of the tenant', async () => {
    await signOut();
    assert.equal(await page.locator('#view').textContent(), '');
    await page.goto(`${base}/console#/runs`);
    assert.equal(await settled(), 'signin');
    assert.ok(!(await pageText()).includes(seed.a.markers[0]));
  });

  await step("B sees its own canaries (so the sweep above would have caught them)", async () => {
    await signIn(seed.b.key, 'b');
    assert.equal(await go('#/threads'), 'ready');
    const text = await pageText();
    assert.ok(text.includes(`thread-${seed.b.canaries[0]}`), "B's thread canary");
    assert.equal(await go('#/usage'), 'ready');
    assert.ok((await page.getByTestId('chart-agent').textContent()).includes(`agent-${seed.b.canaries[0]}`));
    await signOut();
  });

  await step('a tenant_app key sees runs, and is told that usage, keys and audit need an admin key', async () => {
    await signIn(seed.a.app_key, 'a-app');
    assert.equal(await page.getByTestId('needs-admin').count(), 1, 'usage needs an admin key');
    assert.equal(await go('#/runs'), 'ready');
    assert.ok(await page.getByTestId('run-link').count() >= 3);
    assertNoCanary(await pageText(), 'runs, with an app key');
    for (const hash of ['#/keys', '#/audit']) {
      assert.equal(await go(hash), 'ready');
      assert.equal(await page.getByTestId('needs-admin').count(), 1, `${hash} needs an admin key`);
    }
    await signOut();
  });

  await step('the operator sees every tenant, budgets, a spend chart, queue and refusals', async () => {
    await signIn(seed.operator_key, 'operator');
    assert.equal(new URL(page.url()).hash, '#/tenants');
    const names = await page.getByTestId('tenant-name').allTextContents();
    for (const n of [seed.a.name, seed.b.name, seed.c.name]) assert.ok(names.includes(n), `${n} in ${names}`);
    const series = await page.locator('[data-testid=chart-spend] g.series').evaluateAll((gs) => gs.map((g) => g.getAttribute('data-series')));
    assert.ok(series.includes(seed.a.name) && series.includes(seed.b.name), `spend series: ${series}`);
    const points = await page.locator('[data-testid=chart-spend] circle.point').evaluateAll(
      (cs) => cs.filter((c) => Number(c.getAttribute('r')) > 2).length);
    assert.ok(points >= 2, 'non-zero spend points');
    assert.ok(await barCount('chart-spend-total') >= 2);
    assert.notEqual(await page.getByTestId('platform-spend').textContent(), '$0.00');
    const rowOf = (name) => page.locator('[data-testid=tenants] tbody tr').filter({has: page.getByTestId('tenant-name').getByText(name, {exact: true})});
    const a = await rowOf(seed.a.name).textContent();
    assert.match(a, /\$10\.00/, 'A\'s monthly budget');
    assert.match(a, /shared/);
    assert.match(await rowOf(seed.b.name).textContent(), /isolated/);
    const c = rowOf(seed.c.name);
    for (const kind of ['rate', 'budget', 'policy']) {
      const n = Number(await c.getByTestId(`refused-${kind}`).textContent());
      assert.ok(n >= 1, `initech refused for ${kind}: ${n}`);
    }
    assert.equal(await rowOf(seed.a.name).getByTestId('refused-rate').textContent(), '0');
    await shot('operator-tenants');
    assert.equal(await go('#/audit'), 'ready');
    assert.equal(await page.getByTestId('audit-verify').getAttribute('data-ok'), 'true');
    assert.match(await page.getByTestId('audit').textContent(), /tenant\.created/);
    await shot('operator-audit');
    await signOut();
  });

  await step('no script errors and no Content-Security-Policy violations', async () => {
    assert.deepEqual(problems, []);
  });
} finally {
  await context.close();
  fs.rmSync(userDataDir, {recursive: true, force: true});
}
console.log(`${passed} checks passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
