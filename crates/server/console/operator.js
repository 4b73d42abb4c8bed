// The operator view: every tenant with its tier, status, budget and spend;
// spend per tenant over time; live queue depth, active runs and refusals
// (`/v1/overview`); and the platform's audit chain.

import {ApiError, api, listAll, mapLimit, path} from './api.js';
import {badge, facts, h, shortId, table} from './dom.js';
import {nanos, toNumber, usd, usdText} from './money.js';
import {dollarTick, hbars, lastDays, lines} from './charts.js';
import {auditSection} from './tenant.js';

const DAYS = 30;
/** Budgets are read one request per tenant: for the first this many. */
const BUDGETS_FOR = 200;
/** Lines in the spend chart; the rest are summed as "other tenants". */
const SERIES = 7;

export async function nav() {
  return [['#/tenants', 'Tenants'], ['#/audit', 'Platform audit']];
}

export const home = '#/tenants';

export async function render(section, id) {
  if (id !== undefined) throw new ApiError(404, 'not_found', 'no such page');
  switch (section) {
    case 'tenants': return tenantsPage();
    case 'audit': return auditSection('Platform audit log');
    default: throw new ApiError(404, 'not_found', 'no such page');
  }
}

async function tenantsPage() {
  const days = lastDays(DAYS);
  const [tenants, overview, usage] = await Promise.all([
    listAll('/v1/tenants'),
    api('/v1/overview'),
    api('/v1/usage', {query: {from: days[0], group_by: 'tenant,day'}}),
  ]);
  const budgets = new Map(await mapLimit(tenants.items.slice(0, BUDGETS_FOR), 4, async (t) => {
    try {
      return [t.id, await api(path`/v1/tenants/${t.id}/budget`)];
    } catch {
      return [t.id, null];
    }
  }));
  const live = new Map(overview.tenants.map((a) => [a.tenant_id, a]));
  const zero = {queued: 0, running: 0, refusals: {rate_limit: 0, budget: 0, policy: 0}};
  const names = new Map(tenants.items.map((t) => [t.id, t.name]));
  const nameOf = (id) => names.get(id) || `deleted tenant ${shortId(id)}`;

  // Spend per tenant and day, in nano-dollars.
  const spend = new Map();
  for (const r of usage.data) {
    if (!spend.has(r.tenant_id)) spend.set(r.tenant_id, new Map());
    const perDay = spend.get(r.tenant_id);
    perDay.set(r.day, (perDay.get(r.day) || 0n) + nanos(r.cost_usd));
  }
  const totalOf = (id) => [...(spend.get(id) || new Map()).values()].reduce((a, b) => a + b, 0n);
  const ranked = [...spend.keys()].sort((a, b) => (totalOf(b) > totalOf(a) ? 1 : totalOf(b) < totalOf(a) ? -1 : 0));
  const top = ranked.slice(0, SERIES);
  const rest = ranked.slice(SERIES);
  const seriesOf = (name, ids) => {
    const perDay = days.map((day) => ids.reduce((sum, id) => sum + ((spend.get(id) || new Map()).get(day) || 0n), 0n));
    return {name, values: perDay.map(toNumber), texts: perDay.map(usd)};
  };
  const series = top.map((id) => seriesOf(nameOf(id), [id]));
  if (rest.length) series.push(seriesOf(`${rest.length} other tenants`, rest));

  const sum = (f) => overview.tenants.reduce((n, a) => n + f(a), 0) ;
  const refused = (r) => r.rate_limit + r.budget + r.policy;
  const platformSpend = ranked.reduce((n, id) => n + totalOf(id), 0n);

  const rows = tenants.items.map((t) => ({tenant: t, budget: budgets.get(t.id), live: live.get(t.id) || zero}));
  return [
    h('h1', null, 'Tenants'),
    facts([
      ['Tenants', `${tenants.items.length}${tenants.complete ? '' : '+'}`],
      ['Active', String(tenants.items.filter((t) => t.status === 'active').length)],
      [`Spend, last ${DAYS} days`, h('span', {'data-testid': 'platform-spend'}, usd(platformSpend))],
      ['Runs queued / running', `${sum((a) => a.queued)} / ${sum((a) => a.running)}`],
      ['Refusals', `${sum((a) => refused(a.refusals)) + refused(overview.other_refusals)} since ${new Date(overview.counting_since).toLocaleString()}`],
    ], 'platform-facts'),
    h('div', {class: 'charts'},
      lines({title: 'Spend per tenant per day', labels: days, series, format: dollarTick, testid: 'chart-spend'}),
      hbars({
        title: `Spend by tenant, last ${DAYS} days`,
        testid: 'chart-spend-total',
        rows: ranked.map((id) => ({label: nameOf(id), value: toNumber(totalOf(id)), text: usd(totalOf(id))})),
        emptyText: 'No spend in this period.',
      })),
    h('h2', null, 'All tenants'),
    h('p', {class: 'lede'}, 'Queue and running runs are live, from the store; refusals are requests this server ' +
      'process refused since it started: 429 for a rate or concurrency limit, 402 for the budget, 403 for a policy.'),
    table([
      {title: 'Tenant', cell: (r) => h('span', {'data-testid': 'tenant-name'}, r.tenant.name)},
      {title: 'Id', cell: (r) => h('code', {title: r.tenant.id}, shortId(r.tenant.id))},
      {title: 'Tier', cell: (r) => (r.tenant.cell ? `${r.tenant.tier} · cell ${r.tenant.cell}` : r.tenant.tier)},
      {title: 'Status', cell: (r) => badge(r.tenant.status, r.tenant.status === 'active' ? 'completed' : 'failed')},
      {title: 'Monthly budget', num: true, cell: (r) => (r.budget ? (r.budget.monthly_limit_usd ? usdText(r.budget.monthly_limit_usd) : 'none') : '—')},
      {title: 'Spent this month', num: true, cell: (r) => (r.budget ? usdText(r.budget.spent_month_usd) : '—')},
      {title: 'Left', num: true, cell: (r) => (r.budget && r.budget.remaining_month_usd ? usdText(r.budget.remaining_month_usd) : '—')},
      {title: 'Queued', num: true, cell: (r) => String(r.live.queued)},
      {title: 'Running', num: true, cell: (r) => String(r.live.running)},
      {title: 'Refused: rate', num: true, cell: (r) => h('span', {'data-testid': 'refused-rate'}, String(r.live.refusals.rate_limit))},
      {title: 'budget', num: true, cell: (r) => h('span', {'data-testid': 'refused-budget'}, String(r.live.refusals.budget))},
      {title: 'policy', num: true, cell: (r) => h('span', {'data-testid': 'refused-policy'}, String(r.live.refusals.policy))},
    ], rows, {testid: 'tenants', empty: 'No tenants yet.'}),
  ];
}
