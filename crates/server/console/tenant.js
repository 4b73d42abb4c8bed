// The tenant view: usage charts, runs with their steps and tool calls,
// threads and messages, knowledge bases and ingestion, keys, and the audit
// log with its chain verification. Everything comes from the API with the
// tenant's own key, so the server decides what this view can see.

import {ApiError, api, hasRoute, listAll, mapLimit, path} from './api.js';
import {badge, facts, h, json, shortId, table, when} from './dom.js';
import {nanos, toNumber, usd, usdText} from './money.js';
import {countTick, dollarTick, hbars, lastDays, stackedBars} from './charts.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const DAYS = 30;
/** Runs are listed per thread: the console reads the most recent threads. */
const RECENT_THREADS = 25;

export async function nav() {
  const items = [
    ['#/usage', 'Usage'],
    ['#/runs', 'Runs'],
    ['#/threads', 'Threads'],
    ['#/knowledge', 'Knowledge'],
    ['#/keys', 'Keys'],
    ['#/audit', 'Audit log'],
  ];
  // Servers without the sandbox API get no sandbox page.
  if (await hasRoute('/v1/sandbox/policy')) items.splice(2, 0, ['#/sandbox', 'Sandbox']);
  return items;
}

export const home = '#/usage';

/** Renders `section` (and `id`, for a detail page); returns the nodes to show. */
export async function render(section, id) {
  if (id !== undefined && !UUID.test(id)) throw new ApiError(404, 'not_found', 'no such page');
  switch (section) {
    case 'usage': return usagePage();
    case 'runs': return id ? runPage(id) : runsPage();
    case 'threads': return id ? threadPage(id) : threadsPage();
    case 'knowledge': return id ? kbPage(id) : kbsPage();
    case 'keys': return keysPage();
    case 'audit': return auditPage();
    case 'sandbox': return sandboxPage();
    default: throw new ApiError(404, 'not_found', 'no such page');
  }
}

/** A section that a tenant_app key may not read becomes a notice, not an error. */
async function adminOnly(fn) {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof ApiError && e.status === 403) {
      return h('p', {class: 'notice', 'data-testid': 'needs-admin'},
        `This part needs a tenant_admin key (${e.message}).`);
    }
    throw e;
  }
}

function agentNamer(agents) {
  const names = new Map(agents.map((a) => [a.id, a.name]));
  return (id) => (id ? names.get(id) || `deleted agent ${shortId(id)}` : '(no agent: direct API calls)');
}

// ---------------------------------------------------------------- usage

async function usagePage() {
  const days = lastDays(DAYS);
  const query = (group_by) => api('/v1/usage', {query: {from: days[0], group_by}});
  const usage = await adminOnly(async () => {
    const [byDayModel, byModel, byAgent, byKind, agents, budget] = await Promise.all([
      query('day,model'), query('model'), query('agent'), query('kind'),
      listAll('/v1/agents'), api('/v1/budget'),
    ]);
    return {byDayModel, byModel, byAgent, byKind, agents: agents.items, budget};
  });
  if (usage instanceof Node) return [h('h1', null, 'Usage'), usage];
  const {byDayModel, byModel, byAgent, byKind, agents, budget} = usage;

  const total = byKind.data.reduce((sum, r) => sum + nanos(r.cost_usd), 0n);
  const tokensIn = byKind.data.reduce((sum, r) => sum + r.input_tokens, 0);
  const tokensOut = byKind.data.reduce((sum, r) => sum + r.output_tokens, 0);
  const events = byKind.data.reduce((sum, r) => sum + r.events, 0);

  const models = [...new Set(byDayModel.data.map((r) => r.model || '(none)'))].sort();
  const series = models.map((model) => {
    const cost = days.map((day) => byDayModel.data
      .filter((r) => r.day === day && (r.model || '(none)') === model)
      .reduce((sum, r) => sum + nanos(r.cost_usd), 0n));
    return {name: model, values: cost.map(toNumber), texts: cost.map(usd)};
  });
  const name = agentNamer(agents);

  return [
    h('h1', null, 'Usage'),
    h('p', {class: 'lede'}, `The last ${DAYS} days (UTC), from ${days[0]}.`),
    facts([
      ['Cost', h('span', {'data-testid': 'usage-total'}, usd(total))],
      ['Tokens in / out', `${tokensIn.toLocaleString()} / ${tokensOut.toLocaleString()}`],
      ['Usage events', events.toLocaleString()],
      ['Spent this month', usdText(budget.spent_month_usd)],
      ['Monthly budget', budget.monthly_limit_usd ? usdText(budget.monthly_limit_usd) : 'none'],
      ['Left this month', budget.remaining_month_usd ? usdText(budget.remaining_month_usd) : '—'],
    ], 'usage-facts'),
    h('div', {class: 'charts'},
      stackedBars({title: 'Cost per day, by model', labels: days, series, format: dollarTick, testid: 'chart-day'}),
      hbars({
        title: 'Cost by model, tool or resource',
        testid: 'chart-model',
        rows: byModel.data.map((r) => ({label: r.model || '(none)', value: toNumber(nanos(r.cost_usd)),
          text: `${usd(nanos(r.cost_usd))} · ${(r.input_tokens + r.output_tokens).toLocaleString()} tok`})),
      }),
      hbars({
        title: 'Tokens by model',
        testid: 'chart-tokens',
        rows: byModel.data.map((r) => ({label: r.model || '(none)', value: r.input_tokens + r.output_tokens,
          text: `${r.input_tokens.toLocaleString()} in / ${r.output_tokens.toLocaleString()} out`})),
      }),
      hbars({
        title: 'Cost by agent',
        testid: 'chart-agent',
        rows: byAgent.data.map((r) => ({label: name(r.agent_id), value: toNumber(nanos(r.cost_usd)),
          text: `${usd(nanos(r.cost_usd))} · ${r.events} events`})),
      })),
    h('h2', null, 'By kind'),
    table([
      {title: 'Kind', cell: (r) => r.kind},
      {title: 'Events', num: true, cell: (r) => r.events.toLocaleString()},
      {title: 'Input tokens', num: true, cell: (r) => r.input_tokens.toLocaleString()},
      {title: 'Output tokens', num: true, cell: (r) => r.output_tokens.toLocaleString()},
      {title: 'Quantity', num: true, cell: (r) => r.quantity.toLocaleString()},
      {title: 'Cost', num: true, cell: (r) => usdText(r.cost_usd)},
    ], byKind.data, {testid: 'usage-kinds', empty: 'No usage in this period.'}),
    budget.alerts && budget.alerts.length ? [
      h('h2', null, 'Budget alerts'),
      table([
        {title: 'Period', cell: (a) => a.period},
        {title: 'Kind', cell: (a) => a.kind},
        {title: 'Threshold', num: true, cell: (a) => usdText(a.threshold_usd)},
        {title: 'Spent', num: true, cell: (a) => usdText(a.spent_usd)},
        {title: 'When', cell: (a) => when(a.crossed_at)},
      ], budget.alerts),
    ] : null,
  ];
}

// ---------------------------------------------------------------- runs

function runUsage(run) {
  return (run.output && run.output.usage) || {};
}

function duration(run) {
  if (!run.started_at || !run.finished_at) return '—';
  const ms = new Date(run.finished_at) - new Date(run.started_at);
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

async function runsPage() {
  const [threads, agents] = await Promise.all([listAll('/v1/threads'), listAll('/v1/agents')]);
  const recent = threads.items.slice(-RECENT_THREADS).reverse();
  const lists = await mapLimit(recent, 4, (t) => api(path`/v1/threads/${t.id}/runs`, {query: {limit: 100}}));
  const runs = lists.flatMap((l) => l.data).sort((a, b) => b.created_at.localeCompare(a.created_at));
  const name = agentNamer(agents.items);
  return [
    h('h1', null, 'Runs'),
    h('p', {class: 'lede'}, `Runs on the ${recent.length} most recent threads, newest first.`),
    table([
      {title: 'Run', cell: (r) => h('a', {href: `#/runs/${r.id}`, 'data-testid': 'run-link'}, shortId(r.id))},
      {title: 'Agent', cell: (r) => `${name(r.agent_id)} v${r.agent_version}`},
      {title: 'Status', cell: (r) => badge(r.status)},
      {title: 'Steps', num: true, cell: (r) => String(runUsage(r).steps ?? '—')},
      {title: 'Tokens', num: true, cell: (r) => String((runUsage(r).input_tokens ?? 0) + (runUsage(r).output_tokens ?? 0))},
      {title: 'Cost', num: true, cell: (r) => usdText(runUsage(r).cost_usd)},
      {title: 'Took', num: true, cell: duration},
      {title: 'Created', cell: (r) => when(r.created_at)},
      {title: 'Thread', cell: (r) => h('a', {href: `#/threads/${r.thread_id}`}, shortId(r.thread_id))},
      {title: 'Error', cell: (r) => r.error || ''},
    ], runs, {testid: 'runs', empty: 'No runs yet.'}),
  ];
}

/** Tool names whose calls run code in the sandbox. */
const SANDBOX_TOOLS = /^(code|python|sandbox|run_code|code_execution|execute)/;

function stepDetail(step) {
  const d = step.data || {};
  if (step.kind === 'model_call') {
    return [
      h('strong', null, d.model || 'model'),
      ` · ${d.input_tokens ?? 0} in / ${d.output_tokens ?? 0} out tokens · ${usdText(d.cost_usd)} · ${d.finish_reason || ''}`,
      d.tool_calls ? ` · asks for ${d.tool_calls} tool call${d.tool_calls === 1 ? '' : 's'}` : '',
    ];
  }
  if (step.kind === 'tool_call') {
    const sandbox = SANDBOX_TOOLS.test(d.tool || '') || 'sandbox' in d || 'exit_code' in d;
    const extra = Object.fromEntries(Object.entries(d).filter(([k]) => !['tool', 'call_id', 'ok', 'arguments_sha256', 'result_bytes'].includes(k)));
    return [
      h('strong', null, d.tool || 'tool'),
      sandbox ? [' ', badge('sandbox', 'sandbox')] : '',
      ' ', badge(d.ok ? 'ok' : 'failed', d.ok ? 'completed' : 'failed'),
      ` · result ${d.result_bytes ?? 0} bytes`,
      Object.keys(extra).length ? ` · ${json(extra)}` : '',
    ];
  }
  return json(d);
}

async function runPage(id) {
  const run = await api(path`/v1/runs/${id}`);
  const [steps, messages, agent] = await Promise.all([
    api(path`/v1/runs/${id}/steps`),
    listAll(path`/v1/threads/${run.thread_id}/messages`),
    api(path`/v1/agents/${run.agent_id}`).catch(() => null),
  ]);
  const mine = messages.items.filter((m) => m.run_id === run.id);
  const results = new Map(mine.filter((m) => m.role === 'tool').map((m) => [m.tool_call_id, m]));
  const calls = mine.flatMap((m) => (m.tool_calls || []).map((c) => ({...c, result: results.get(c.id)})));
  const usage = runUsage(run);
  return [
    h('p', {class: 'crumbs'}, h('a', {href: '#/runs'}, 'Runs'), ' / ', shortId(run.id)),
    h('h1', null, 'Run ', h('code', null, run.id)),
    facts([
      ['Status', badge(run.status)],
      ['Agent', agent ? `${agent.name} (version ${run.agent_version})` : shortId(run.agent_id)],
      ['Thread', h('a', {href: `#/threads/${run.thread_id}`}, run.thread_id)],
      ['Created', when(run.created_at)],
      ['Took', duration(run)],
      ['Attempts', String(run.attempts)],
      ['Steps', String(usage.steps ?? steps.data.length)],
      ['Tokens in / out', `${usage.input_tokens ?? 0} / ${usage.output_tokens ?? 0}`],
      ['Cost', usdText(usage.cost_usd)],
      run.error ? ['Error', h('span', {class: 'error-text'}, run.error)] : null,
      run.output && run.output.content !== undefined ? ['Answer', h('span', {'data-testid': 'run-answer'}, run.output.content)] : null,
    ], 'run-facts'),
    h('h2', null, 'Steps'),
    table([
      {title: '#', num: true, cell: (st) => String(st.seq)},
      {title: 'Kind', cell: (st) => badge(st.kind, 'kind')},
      {title: 'Detail', cell: stepDetail},
      {title: 'When', cell: (st) => when(st.created_at)},
    ], steps.data, {testid: 'steps', empty: 'No steps (yet).'}),
    h('h2', null, 'Tool calls'),
    table([
      {title: 'Tool', cell: (c) => c.name},
      {title: 'Arguments', cell: (c) => h('code', null, json(c.arguments, 400))},
      {title: 'Result', cell: (c) => (c.result ? h('code', null, json(c.result.content, 400)) : '—')},
    ], calls, {testid: 'tool-calls', empty: 'This run called no tools.'}),
    h('h2', null, 'Messages of this run'),
    messagesTable(mine),
  ];
}

function messagesTable(messages) {
  return table([
    {title: 'Role', cell: (m) => badge(m.role, 'role')},
    {title: 'Content', cell: (m) => h('span', {class: 'content'}, json(m.content, 2000))},
    {title: 'Tool calls', cell: (m) => (m.tool_calls ? m.tool_calls.map((c) => h('div', null, h('code', null, `${c.name}(${c.arguments})`))) : '')},
    {title: 'Run', cell: (m) => (m.run_id ? h('a', {href: `#/runs/${m.run_id}`}, shortId(m.run_id)) : '')},
    {title: 'When', cell: (m) => when(m.created_at)},
  ], messages, {testid: 'messages', empty: 'No messages.'});
}

// ---------------------------------------------------------------- threads

async function threadsPage() {
  const threads = await listAll('/v1/threads');
  const rows = threads.items.slice().reverse();
  return [
    h('h1', null, 'Threads'),
    h('p', {class: 'lede'}, `${rows.length}${threads.complete ? '' : '+'} threads, newest first.`),
    table([
      {title: 'Thread', cell: (t) => h('a', {href: `#/threads/${t.id}`, 'data-testid': 'thread-link'}, shortId(t.id))},
      {title: 'Metadata', cell: (t) => h('code', null, json(t.metadata))},
      {title: 'Summary', cell: (t) => json(t.summary)},
      {title: 'Created', cell: (t) => when(t.created_at)},
    ], rows, {testid: 'threads', empty: 'No threads yet.'}),
  ];
}

async function threadPage(id) {
  const [thread, messages, runs] = await Promise.all([
    api(path`/v1/threads/${id}`),
    listAll(path`/v1/threads/${id}/messages`),
    api(path`/v1/threads/${id}/runs`, {query: {limit: 500}}),
  ]);
  return [
    h('p', {class: 'crumbs'}, h('a', {href: '#/threads'}, 'Threads'), ' / ', shortId(thread.id)),
    h('h1', null, 'Thread ', h('code', null, thread.id)),
    facts([
      ['Created', when(thread.created_at)],
      ['Metadata', h('code', {'data-testid': 'thread-metadata'}, json(thread.metadata, 2000))],
      ['Summary', json(thread.summary)],
    ]),
    h('h2', null, 'Messages'),
    messagesTable(messages.items),
    h('h2', null, 'Runs'),
    table([
      {title: 'Run', cell: (r) => h('a', {href: `#/runs/${r.id}`}, shortId(r.id))},
      {title: 'Status', cell: (r) => badge(r.status)},
      {title: 'Created', cell: (r) => when(r.created_at)},
      {title: 'Error', cell: (r) => r.error || ''},
    ], runs.data, {empty: 'No runs on this thread.'}),
  ];
}

// ---------------------------------------------------------------- knowledge

async function kbsPage() {
  const kbs = await listAll('/v1/knowledge-bases');
  return [
    h('h1', null, 'Knowledge bases'),
    table([
      {title: 'Name', cell: (k) => h('a', {href: `#/knowledge/${k.id}`, 'data-testid': 'kb-link'}, k.name)},
      {title: 'Description', cell: (k) => k.description || ''},
      {title: 'Embedding model', cell: (k) => k.embedding_model},
      {title: 'Documents', num: true, cell: (k) => String(k.documents)},
      {title: 'Chunks', num: true, cell: (k) => String(k.chunks)},
      {title: 'Bytes', num: true, cell: (k) => Number(k.bytes).toLocaleString()},
      {title: 'Created', cell: (k) => when(k.created_at)},
    ], kbs.items, {testid: 'kbs', empty: 'No knowledge bases yet.'}),
  ];
}

async function kbPage(id) {
  const [kb, docs] = await Promise.all([
    api(path`/v1/knowledge-bases/${id}`),
    listAll(path`/v1/knowledge-bases/${id}/documents`),
  ]);
  return [
    h('p', {class: 'crumbs'}, h('a', {href: '#/knowledge'}, 'Knowledge'), ' / ', kb.name),
    h('h1', null, kb.name),
    facts([
      ['Embedding model', `${kb.embedding_model} (${kb.dimensions} dimensions)`],
      ['Chunks', `${kb.chunks} of up to ${kb.chunk_tokens} tokens, ${kb.chunk_overlap} overlapping`],
      ['Documents', String(kb.documents)],
      ['Bytes', Number(kb.bytes).toLocaleString()],
      kb.description ? ['Description', kb.description] : null,
    ]),
    h('h2', null, 'Documents'),
    table([
      {title: 'Name', cell: (d) => d.name},
      {title: 'Format', cell: (d) => d.format},
      {title: 'Status', cell: (d) => badge(d.status)},
      {title: 'Progress', cell: (d) => h('span', {class: 'progress'},
        h('progress', {max: Math.max(1, d.progress.total), value: d.progress.done}),
        ` ${d.progress.done}/${d.progress.total}`)},
      {title: 'Chunks', num: true, cell: (d) => String(d.chunks)},
      {title: 'Bytes', num: true, cell: (d) => Number(d.bytes).toLocaleString()},
      {title: 'Ingested', cell: (d) => when(d.ingested_at)},
      {title: 'Error', cell: (d) => d.error || ''},
    ], docs.items, {testid: 'documents', empty: 'No documents yet.'}),
  ];
}

// ---------------------------------------------------------------- keys

async function keysPage() {
  const body = await adminOnly(async () => table([
    {title: 'Name', cell: (k) => k.name},
    {title: 'Prefix', cell: (k) => h('code', null, k.prefix)},
    {title: 'Scope', cell: (k) => k.scope || ''},
    {title: 'State', cell: (k) => keyState(k)},
    {title: 'Created', cell: (k) => when(k.created_at)},
    {title: 'Expires', cell: (k) => when(k.expires_at)},
    {title: 'Last used', cell: (k) => when(k.last_used_at)},
  ], (await listAll('/v1/keys')).items, {testid: 'keys', empty: 'No keys.'}));
  return [h('h1', null, 'API keys'), h('p', {class: 'lede'}, 'Secrets are shown once, when a key is made; here only prefixes.'), body];
}

function keyState(k) {
  if (k.revoked_at) return badge('revoked', 'failed');
  if (k.expires_at && new Date(k.expires_at) <= new Date()) return badge('expired', 'expired');
  return badge('active', 'completed');
}

// ---------------------------------------------------------------- audit

/** The audit page, shared with the operator view (its platform chain). */
export async function auditSection(title) {
  const body = await adminOnly(async () => {
    const [verify, entries] = await Promise.all([api('/v1/audit/verify'), listAll('/v1/audit', {maxPages: 20})]);
    const rows = entries.items.slice().reverse().slice(0, 500);
    const problem = verify.first_problem;
    return [
      h('div', {class: `verify ${verify.ok ? 'ok' : 'broken'}`, 'data-testid': 'audit-verify', 'data-ok': String(verify.ok)},
        h('strong', null, verify.ok ? 'Chain verified' : 'Chain BROKEN'),
        ` — ${verify.entries_checked} entries checked in chain ${verify.chain}`,
        verify.head_hash ? [' · head ', h('code', null, `#${verify.head_seq} ${verify.head_hash.slice(0, 16)}…`)] : '',
        problem ? ` · first problem: ${problem.kind} at seq ${problem.seq}` : ''),
      h('p', {class: 'lede'}, `Newest first; ${rows.length} of ${entries.items.length}${entries.complete ? '' : '+'} entries.`),
      table([
        {title: 'Seq', num: true, cell: (e) => String(e.seq)},
        {title: 'Time', cell: (e) => when(e.time)},
        {title: 'Actor', cell: (e) => `${e.actor}${e.via_operator ? ' (operator)' : ''}`},
        {title: 'Action', cell: (e) => h('code', null, e.action)},
        {title: 'Target', cell: (e) => e.target},
        {title: 'Outcome', cell: (e) => badge(e.outcome)},
        {title: 'Details', cell: (e) => h('code', null, json(e.details, 200))},
      ], rows, {testid: 'audit', empty: 'No entries.'}),
    ];
  });
  return [h('h1', null, title), body];
}

function auditPage() {
  return auditSection('Audit log');
}

// ---------------------------------------------------------------- sandbox

/**
 * Sandbox executions — from the API and from agents' `run_code` calls —
 * and refusals, as the audit log records them (digests and numbers only,
 * never the code or its output), with the tenant's policy.
 */
async function sandboxPage() {
  const body = await adminOnly(async () => {
    const [own, entries] = await Promise.all([
      api('/v1/sandbox/policy'),
      listAll('/v1/audit', {query: {action: 'sandbox.'}, maxPages: 5}),
    ]);
    const rows = entries.items.slice().reverse();
    const policy = own.policy || {};
    const d = (e) => e.details || {};
    const u = (e) => d(e).usage || {};
    return [
      facts([
        ['Backend', own.backend || 'none on this server'],
        ...Object.entries(policy).slice(0, 10).map(([k, v]) => [k.replaceAll('_', ' '), json(v, 80)]),
      ], 'sandbox-policy'),
      h('h2', null, 'Executions and refusals'),
      table([
        {title: 'Seq', num: true, cell: (e) => String(e.seq)},
        {title: 'Time', cell: (e) => when(e.time)},
        {title: 'By', cell: (e) => (e.actor === 'system' ? 'an agent run' : e.actor)},
        {title: 'Language', cell: (e) => d(e).language || ''},
        {title: 'Outcome', cell: (e) => (e.action === 'sandbox.refused'
          ? badge(`refused: ${d(e).refusal || ''}`, 'failed') : badge(e.outcome))},
        {title: 'Exit', num: true, cell: (e) => (u(e).exit_code ?? (u(e).signal ? `signal ${u(e).signal}` : '—')).toString()},
        {title: 'CPU ms', num: true, cell: (e) => String(u(e).cpu_ms ?? '—')},
        {title: 'Wall ms', num: true, cell: (e) => String(u(e).wall_ms ?? '—')},
        {title: 'Limit hit', cell: (e) => u(e).limit_exceeded || (u(e).timed_out ? 'timeout' : '')},
        {title: 'Reason', cell: (e) => d(e).reason || ''},
        {title: 'Code sha256', cell: (e) => h('code', null, String(d(e).code_sha256 || '').slice(0, 12))},
      ], rows, {testid: 'sandbox', empty: 'No sandbox executions yet.'}),
    ];
  });
  return [h('h1', null, 'Sandbox'), body];
}
