// medshard's browser UI: a hash router, the page frame and the role-based navigation.
//
// Client routes live in the URL fragment (#/studies/1.2.3): fragments never reach the server,
// so patient ids and study UIDs stay out of access logs, proxies and Referer headers, and
// every deep link is served by the one public page, index.html.
import './style.css';
import * as session from './api';
import type { Me, Role } from './api';
import { NAV, homeOf } from './roles';
import { h, message, replace } from './dom';

/** A view renders into `root`; it may return a cleanup run when the user leaves it. */
export type Cleanup = () => void;
export type View = (root: HTMLElement, params: string[]) => Promise<Cleanup | void> | Cleanup | void;

interface Route {
  pattern: RegExp;
  roles: Role[] | null; // null: public (the login page)
  title: string;
  load: () => Promise<View>;
}

const ROUTES: Route[] = [
  { pattern: /^login$/, roles: null, title: 'Log in', load: async () => (await import('./views/login')).render },
  {
    pattern: /^worklist$/,
    roles: ['doctor', 'service', 'admin'],
    title: 'Worklist',
    load: async () => (await import('./views/worklist')).render,
  },
  {
    pattern: /^patients\/(.+)$/,
    roles: ['doctor', 'service', 'admin', 'expert', 'patient'],
    title: 'Patient',
    load: async () => (await import('./views/patient')).render,
  },
  {
    pattern: /^studies\/([0-9.]+)$/,
    roles: ['doctor', 'service', 'admin', 'expert', 'patient'],
    title: 'Viewer',
    load: async () => (await import('./views/viewer')).render,
  },
  { pattern: /^upload$/, roles: ['doctor', 'service'], title: 'Upload', load: async () => (await import('./views/upload')).render },
  { pattern: /^shares$/, roles: ['doctor', 'expert'], title: 'Shares', load: async () => (await import('./views/shares')).render },
  { pattern: /^break-glass(?:\/(.+))?$/, roles: ['doctor', 'admin'], title: 'Emergency access', load: async () => (await import('./views/breakglass')).render },
  { pattern: /^me$/, roles: ['patient'], title: 'My records', load: async () => (await import('./views/me')).render },
  { pattern: /^admin$/, roles: ['admin'], title: 'Cluster', load: async () => (await import('./views/admin')).renderCluster },
  { pattern: /^admin\/users$/, roles: ['admin'], title: 'Users', load: async () => (await import('./views/admin')).renderUsers },
  { pattern: /^admin\/audit$/, roles: ['admin'], title: 'Audit log', load: async () => (await import('./views/admin')).renderAudit },
];

const app = document.getElementById('app') as HTMLElement;
let cleanup: Cleanup | void = undefined;
let loginNotice = '';
let renderCount = 0;

function frame(who: Me, current: string): HTMLElement {
  const links = (NAV[who.role] ?? []).map(([href, label]) =>
    h('a', { href, class: 'nav-link', 'aria-current': current.startsWith(href) ? 'page' : null }, label),
  );
  const menu = h('nav', { class: 'nav', id: 'nav', 'aria-label': 'Main' }, links);
  const toggle = h(
    'button',
    {
      class: 'nav-toggle btn btn-small btn-quiet',
      type: 'button',
      'aria-expanded': 'false',
      'aria-controls': 'nav',
      onclick: () => {
        const open = menu.classList.toggle('open');
        toggle.setAttribute('aria-expanded', String(open));
      },
    },
    'Menu',
  );
  const skip = h('button', { type: 'button', class: 'skip', onclick: () => document.getElementById('main')?.focus() }, 'Skip to content');
  return h(
    'header',
    { class: 'top' },
    skip,
    h('a', { class: 'brand', href: homeOf(who.role) }, 'medshard'),
    toggle,
    menu,
    h(
      'div',
      { class: 'who' },
      h('span', { 'data-testid': 'whoami' }, `${who.username} · ${who.role}`),
      h(
        'button',
        {
          type: 'button',
          class: 'btn btn-quiet',
          'data-testid': 'logout',
          onclick: () => void session.logout(),
        },
        'Log out',
      ),
    ),
  );
}

function navigate(hash: string): void {
  if (location.hash === hash) void route();
  else location.hash = hash;
}

async function route(): Promise<void> {
  const mine = ++renderCount;
  const path = decodeURIComponent(location.hash.replace(/^#\/?/, ''));
  const who = session.me();
  if (!who && path !== 'login') {
    if (path) sessionStorage.setItem('medshard.next', `#/${path}`);
    navigate('#/login');
    return;
  }
  if (who && (path === '' || path === 'login')) {
    navigate(homeOf(who.role));
    return;
  }
  const found = ROUTES.map((r) => ({ r, m: r.pattern.exec(path) })).find((x) => x.m);
  if (typeof cleanup === 'function') cleanup();
  cleanup = undefined;
  const main = h('main', { id: 'main', tabindex: '-1' });
  replace(app, who ? frame(who, location.hash) : null, main);
  if (!found) {
    replace(main, h('h1', {}, 'Not found'), message(`There is no page at #/${path}.`, 'error'));
    return;
  }
  const { r, m } = found;
  document.title = `${r.title} · medshard`;
  if (who && r.roles && !r.roles.includes(who.role)) {
    replace(main, h('h1', {}, r.title), message(`This page is not available to ${/^[aeiou]/.test(who.role) ? 'an' : 'a'} ${who.role}.`, 'error'));
    return;
  }
  if (!who) {
    main.dataset.notice = loginNotice;
    loginNotice = '';
  }
  try {
    const view = await r.load();
    if (mine !== renderCount) return;
    cleanup = await view(main, (m ?? []).slice(1));
  } catch (err) {
    if (mine !== renderCount) return;
    const text = err instanceof Error ? err.message : String(err);
    replace(main, h('h1', {}, r.title), message(text, 'error'));
  }
}

session.onSessionEnd((reason) => {
  loginNotice = reason;
  navigate('#/login');
});

window.addEventListener('hashchange', () => void route());
void session.resume().then(() => route());
