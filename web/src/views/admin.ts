// The admin's pages: the cluster as a picture (nodes by site, state, used/capacity, shard
// spread, replication), the users, and the audit log with filters. Admins see no clinical data.
import { json } from '../api';
import { errorMessage } from '../components';
import { formatBytes, h, message, replace } from '../dom';
import type { Cleanup } from '../main';

interface NodeStatus {
  name: string;
  url: string;
  site: string;
  state: string;
  used_bytes: number;
  capacity_bytes: number;
  chunks: number;
  replicas_in_catalog: number;
  last_seen: string | null;
}

interface ClusterStatus {
  nodes: NodeStatus[];
  objects: number;
  instances: number;
  patients: number;
  stored_bytes: number;
  under_replicated: number;
  bad_replicas: number;
  replication: { replicas: number; write_quorum: number };
  shards: { total: number; used: number; min_objects: number; max_objects: number; objects_per_shard: Record<string, number> };
}

function stat(label: string, value: string | number, testid?: string): HTMLElement {
  return h('div', { class: 'stat card', 'data-testid': testid ?? null }, h('div', { class: 'stat-value' }, String(value)), h('div', { class: 'muted' }, label));
}

function nodeCard(n: NodeStatus): HTMLElement {
  const pct = n.capacity_bytes > 0 ? Math.min(100, (100 * n.used_bytes) / n.capacity_bytes) : 0;
  return h(
    'li',
    { class: `card node state-${n.state}`, 'data-testid': 'node', 'data-node': n.name, 'data-state': n.state },
    h('h4', {}, n.name, ' ', h('span', { class: `badge badge-${n.state}` }, n.state)),
    h('div', { class: 'meter', role: 'meter', 'aria-valuenow': pct.toFixed(0), 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-label': `${n.name} used` }, h('span', { style: `width:${pct}%` })),
    h('p', { class: 'small' }, `${formatBytes(n.used_bytes)}${n.capacity_bytes ? ` of ${formatBytes(n.capacity_bytes)}` : ''} · ${n.chunks} chunks · ${n.replicas_in_catalog} replicas`),
    h('p', { class: 'small muted' }, n.last_seen ? `seen ${new Date(n.last_seen).toLocaleTimeString()}` : 'never seen'),
  );
}

function shardChart(perShard: Record<string, number>, total: number): HTMLElement {
  const counts = Array.from({ length: total }, (_, i) => perShard[String(i)] ?? 0);
  const max = Math.max(1, ...counts);
  return h(
    'div',
    { class: 'shards', role: 'img', 'aria-label': `objects per shard, ${total} shards, at most ${max}` },
    counts.map((c, i) => h('span', { style: `height:${(100 * c) / max}%`, title: `shard ${i}: ${c} objects` })),
  );
}

function cluster(s: ClusterStatus): HTMLElement {
  const sites = new Map<string, NodeStatus[]>();
  for (const n of s.nodes) sites.set(n.site, [...(sites.get(n.site) ?? []), n]);
  return h(
    'div',
    {},
    h(
      'div',
      { class: 'stats' },
      stat('nodes up', `${s.nodes.filter((n) => n.state === 'alive').length} / ${s.nodes.length}`, 'nodes-up'),
      stat('patients', s.patients),
      stat('instances', s.instances),
      stat('stored', formatBytes(s.stored_bytes)),
      stat('under-replicated', s.under_replicated, 'under-replicated'),
      stat('bad replicas', s.bad_replicas),
      stat('replication', `k=${s.replication.replicas}, quorum ${s.replication.write_quorum}`),
    ),
    h('h2', {}, 'Sites and nodes'),
    h(
      'div',
      { class: 'sites' },
      [...sites].map(([site, nodes]) =>
        h('section', { class: 'site', 'data-testid': 'site' }, h('h3', {}, site), h('ul', { class: 'nodes' }, nodes.map(nodeCard))),
      ),
    ),
    h('h2', {}, `Shard spread (${s.shards.used} of ${s.shards.total} shards used, ${s.shards.min_objects}–${s.shards.max_objects} objects)`),
    shardChart(s.shards.objects_per_shard, s.shards.total),
  );
}

export async function renderCluster(root: HTMLElement): Promise<Cleanup> {
  const body = h('div', { 'aria-live': 'polite' }, message('Loading…'));
  replace(root, h('h1', {}, 'Cluster'), body);
  let stopped = false;
  let timer: number | undefined;
  const load = async () => {
    try {
      const s = await json<ClusterStatus>('/api/status');
      if (!stopped) replace(body, cluster(s));
    } catch (err) {
      if (!stopped) replace(body, message(errorMessage(err), 'error'));
    }
    if (!stopped) timer = window.setTimeout(() => void load(), 5000);
  };
  await load();
  return () => {
    stopped = true;
    window.clearTimeout(timer);
  };
}

interface UserInfo {
  username: string;
  role: string;
  full_name: string;
  sites: string[];
  patient_id: string | null;
  disabled: boolean;
  locked: boolean;
}

export async function renderUsers(root: HTMLElement): Promise<void> {
  const body = h('div', { 'aria-live': 'polite' }, message('Loading…'));
  replace(root, h('h1', {}, 'Users'), body);
  const load = async () => {
    try {
      const users = await json<UserInfo[]>('/api/users');
      replace(
        body,
        h(
          'div',
          { class: 'table-wrap' },
          h(
            'table',
            { 'data-testid': 'users' },
            h('thead', {}, h('tr', {}, ['User', 'Role', 'Name', 'Sites', 'Patient ID', 'State', ''].map((t) => h('th', { scope: 'col' }, t)))),
            h(
              'tbody',
              {},
              users.map((u) =>
                h(
                  'tr',
                  { 'data-testid': 'user', 'data-user': u.username },
                  h('td', { 'data-label': 'User' }, u.username),
                  h('td', { 'data-label': 'Role' }, u.role),
                  h('td', { 'data-label': 'Name' }, u.full_name),
                  h('td', { 'data-label': 'Sites' }, u.sites.join(', ')),
                  h('td', { 'data-label': 'Patient ID' }, u.patient_id ?? ''),
                  h('td', { 'data-label': 'State' }, u.disabled ? 'disabled' : u.locked ? 'locked' : 'active'),
                  h(
                    'td',
                    { class: 'actions' },
                    u.disabled || u.role === 'admin'
                      ? null
                      : h(
                          'button',
                          {
                            type: 'button',
                            class: 'btn btn-small btn-quiet',
                            onclick: () => {
                              if (!confirm(`Disable ${u.username}? Their sessions end at once.`)) return;
                              json(`/api/users/${encodeURIComponent(u.username)}/disable`, { method: 'POST' })
                                .then(load)
                                .catch((err: unknown) => body.prepend(message(errorMessage(err), 'error')));
                            },
                          },
                          'Disable',
                        ),
                  ),
                ),
              ),
            ),
          ),
        ),
      );
    } catch (err) {
      replace(body, message(errorMessage(err), 'error'));
    }
  };
  await load();
}

interface AuditEvent {
  seq: number;
  at: string;
  actor: string;
  role: string;
  action: string;
  outcome: string;
  source: string;
  detail: string;
  flagged: boolean;
  patient_id: string | null;
}

export async function renderAudit(root: HTMLElement): Promise<void> {
  const actor = h('input', { id: 'a-actor', type: 'search' });
  const action = h('input', { id: 'a-action', type: 'search' });
  const flagged = h('input', { id: 'a-flagged', type: 'checkbox' });
  const body = h('div', { 'aria-live': 'polite' }, message('Loading…'));
  let all: AuditEvent[] = [];
  const show = () => {
    const rows = all.filter(
      (e) =>
        (!actor.value || e.actor.includes(actor.value)) &&
        (!action.value || e.action.includes(action.value)) &&
        (!flagged.checked || e.flagged),
    );
    replace(
      body,
      h('p', { class: 'muted' }, `${rows.length} of ${all.length} events (newest first)`),
      h(
        'div',
        { class: 'table-wrap' },
        h(
          'table',
          { class: 'log', 'data-testid': 'audit' },
          h('thead', {}, h('tr', {}, ['#', 'When', 'Actor', 'Role', 'Action', 'Outcome', 'Patient', 'Detail'].map((t) => h('th', { scope: 'col' }, t)))),
          h(
            'tbody',
            {},
            rows.slice(0, 500).map((e) =>
              h(
                'tr',
                { class: e.flagged ? 'flagged' : '' },
                h('td', { 'data-label': '#' }, e.seq),
                h('td', { 'data-label': 'When' }, new Date(e.at).toLocaleString()),
                h('td', { 'data-label': 'Actor' }, e.actor),
                h('td', { 'data-label': 'Role' }, e.role),
                h('td', { 'data-label': 'Action' }, e.action),
                h('td', { 'data-label': 'Outcome' }, e.outcome),
                h('td', { 'data-label': 'Patient' }, e.patient_id ?? ''),
                h('td', { 'data-label': 'Detail', class: 'small' }, e.detail),
              ),
            ),
          ),
        ),
      ),
    );
  };
  for (const el of [actor, action, flagged]) el.addEventListener('input', show);
  replace(
    root,
    h('h1', {}, 'Audit log'),
    h(
      'form',
      { class: 'filters', role: 'search', onsubmit: (e: Event) => e.preventDefault() },
      h('div', { class: 'field' }, h('label', { for: 'a-actor' }, 'Actor'), actor),
      h('div', { class: 'field' }, h('label', { for: 'a-action' }, 'Action'), action),
      h('div', { class: 'field field-check' }, flagged, h('label', { for: 'a-flagged' }, 'Emergency access only')),
    ),
    body,
  );
  try {
    all = (await json<AuditEvent[]>('/api/audit?limit=10000')).reverse();
    show();
  } catch (err) {
    replace(body, message(errorMessage(err), 'error'));
  }
}
