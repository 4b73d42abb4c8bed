// The console's entry point: sign-in, sign-out, and hash routing
// (#/section or #/section/id) to the operator or tenant view. `main`
// carries data-state (signin, loading, ready, error) so tests and people
// can tell when a page has finished loading.

import {ApiError, api, session} from './api.js';
import {fill, h} from './dom.js';
import * as operator from './operator.js';
import * as tenant from './tenant.js';

const $ = (id) => document.getElementById(id);
let view = null; // the operator or tenant module, once signed in
let renders = 0; // a newer render makes older ones drop their result

function setState(state) {
  $('main').dataset.state = state;
}

function showSignIn(message = '') {
  view = null;
  renders += 1;
  fill($('view'));
  fill($('nav'));
  fill($('who'));
  $('signout').hidden = true;
  $('signin').hidden = false;
  $('signin-error').textContent = message;
  $('key').value = '';
  setState('signin');
  $('key').focus();
}

function signOut(message = '') {
  session.clear();
  if (location.hash) history.replaceState(null, '', location.pathname);
  showSignIn(message);
}

/** Checks the stored key against the server and opens the matching view. */
async function start() {
  const key = session.key();
  const kind = key && session.kind(key);
  if (!kind) {
    session.clear();
    showSignIn();
    return;
  }
  setState('loading');
  let who;
  try {
    if (kind === 'operator') {
      await api('/v1/tenants', {query: {limit: 1}});
      who = [h('strong', null, 'Operator'), ' · platform'];
    } else {
      const me = await api('/v1/tenant');
      who = [h('strong', {'data-testid': 'tenant-self'}, me.name), ' · ', me.tier, me.status === 'active' ? '' : ` · ${me.status}`];
    }
  } catch (e) {
    signOut(e instanceof ApiError && e.status === 401
      ? 'The server does not accept this key (unknown, revoked or expired).'
      : `Could not sign in: ${e.message}`);
    return;
  }
  view = kind === 'operator' ? operator : tenant;
  $('signin').hidden = true;
  $('signout').hidden = false;
  fill($('who'), who);
  const items = await view.nav();
  fill($('nav'), items.map(([href, text]) => h('a', {href, 'data-section': href.slice(2)}, text)));
  await route();
}

async function route() {
  if (!view) return;
  const [section, id, ...extra] = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean);
  if (!section) {
    location.replace(view.home);
    return;
  }
  for (const a of $('nav').querySelectorAll('a')) {
    if (a.dataset.section === section) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const mine = ++renders;
  setState('loading');
  fill($('view'), h('p', {class: 'loading'}, 'Loading…'));
  try {
    const nodes = extra.length ? Promise.reject(new ApiError(404, 'not_found', 'no such page')) : view.render(section, id);
    const content = await nodes;
    if (mine !== renders) return;
    fill($('view'), content);
    setState('ready');
  } catch (e) {
    if (mine !== renders) return;
    if (e instanceof ApiError && e.status === 401) {
      signOut('The server no longer accepts this key; sign in again.');
      return;
    }
    fill($('view'), h('div', {class: 'failure', role: 'alert', 'data-testid': 'page-error'},
      h('h1', null, e instanceof ApiError && e.status === 404 ? 'Not found' : 'Something went wrong'),
      h('p', null, e.message),
      e instanceof ApiError ? h('p', null, h('code', null, e.code)) : null));
    setState('error');
  }
}

$('signin-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const key = $('key').value.trim();
  $('key').value = '';
  if (!session.kind(key)) {
    $('signin-error').textContent = 'That is not a Bulkhead API key: it starts with bh_op_ or bh_tk_.';
    return;
  }
  session.set(key);
  start();
});
$('signout').addEventListener('click', () => signOut());
window.addEventListener('hashchange', route);
start();
