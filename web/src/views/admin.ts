// The admin's pages: the cluster as a picture (nodes by site, state, used/capacity/free, a
// map of the nodes' network coordinates, shard spread, replication, the repair, migration and
// compaction queues, the metadata backup), the users, and the audit log with filters. Admins
// see no clinical data.
import { json } from '../api';
import { errorMessage } from '../components';
import { formatBytes, h, message, replace } from '../dom';
import type { Cleanup } from '../main';

/** A Vivaldi network coordinate: predicted RTT (ms) = distance in the plane + both heights. */
interface Coordinate {
  x: number;
  y: number;
  h: number;
  error: number;
}

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
  /** out of space: takes no new copies, still serves reads */
  full?: boolean;
  free_bytes?: number | null;
  admin_state?: string;
  reliability?: number;
  coordinate?: Coordinate;
  rtt_ms?: number;
  predicted_rtt_ms?: number;
}

interface BackupStatus {
  enabled: boolean;
  interval_s: number;
  last_backup_id: string | null;
  last_backup_at: string | null;
  age_s: number | null;
  bytes: number | null;
  nodes: string[];
  copies: number;
  wanted: number;
  objects: number | null;
  last_error: string | null;
}

interface Background {
  totals: Record<string, number>;
  queues: Record<string, number>;
}

interface ClusterStatus {
  nodes: NodeStatus[];
  objects: number;
  instances: number;
  patients: number;
  stored_bytes: number;
  under_replicated: number;
  bad_replicas: number;
  awaiting_dead_delay?: number;
  coordinates?: { service: Coordinate; median_rtt_error: number | null; max_rtt_error: number | null };
  background?: Background | null;
  backup?: BackupStatus;
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
    h(
      'h4',
      {},
      n.name,
      ' ',
      h('span', { class: `badge badge-${n.state}` }, n.state),
      n.full ? [' ', h('span', { class: 'badge badge-full', 'data-testid': 'node-full', title: 'Out of space: takes no new copies, still serves reads' }, 'full')] : null,
      n.admin_state && n.admin_state !== 'active' ? [' ', h('span', { class: 'badge badge-suspect' }, n.admin_state)] : null,
    ),
    h('div', { class: 'meter', role: 'meter', 'aria-valuenow': pct.toFixed(0), 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-label': `${n.name} used` }, h('span', { style: `width:${pct}%` })),
    h('p', { class: 'small' }, `${formatBytes(n.used_bytes)}${n.capacity_bytes ? ` of ${formatBytes(n.capacity_bytes)}` : ''} · ${n.chunks} chunks · ${n.replicas_in_catalog} replicas`),
    h(
      'p',
      { class: 'small', 'data-testid': 'node-free' },
      n.free_bytes === null || n.free_bytes === undefined ? 'free space unknown' : `${formatBytes(n.free_bytes)} free`,
      n.reliability !== undefined ? ` · reliability ${(100 * n.reliability).toFixed(1)}%` : '',
    ),
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

const SVG = 'http://www.w3.org/2000/svg';

function svg(tag: string, attrs: Record<string, string | number>, ...children: (Node | string)[]): SVGElement {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  el.append(...children);
  return el;
}

/**
 * The nodes' Vivaldi coordinates as a 2-D map (distance in the plane ~ round-trip time), the
 * service's own coordinate among them, and the same figures as a table for screen readers.
 */
function coordinateMap(nodes: NodeStatus[], service: Coordinate | undefined): HTMLElement {
  const points = nodes
    .filter((n) => n.coordinate)
    .map((n) => ({ name: n.name, site: n.site, state: n.state, c: n.coordinate as Coordinate, service: false }));
  if (service) points.push({ name: 'metadata service', site: '', state: 'service', c: service, service: true });
  const size = 320;
  const pad = 36;
  const xs = points.map((p) => p.c.x);
  const ys = points.map((p) => p.c.y);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const span = Math.max(x1 - x0, y1 - y0, 0.5); // ms; one scale for both axes keeps distances true
  const px = (x: number) => pad + ((x - (x0 + x1) / 2 + span / 2) / span) * (size - 2 * pad);
  const py = (y: number) => pad + ((y - (y0 + y1) / 2 + span / 2) / span) * (size - 2 * pad);
  const map = svg(
    'svg',
    { viewBox: `0 0 ${size} ${size}`, class: 'coord-map', role: 'img', 'aria-labelledby': 'coord-map-title', 'data-testid': 'coord-map' },
    svg('title', { id: 'coord-map-title' }, `Network coordinates of ${points.length - (service ? 1 : 0)} nodes; the width of the map is ${span.toFixed(1)} ms`),
    svg('rect', { x: 0.5, y: 0.5, width: size - 1, height: size - 1, class: 'coord-frame' }),
    svg('line', { x1: pad, y1: size - 12, x2: size - pad, y2: size - 12, class: 'coord-scale' }),
    svg('text', { x: size / 2, y: size - 16, 'text-anchor': 'middle', class: 'coord-label' }, `${span.toFixed(1)} ms`),
  );
  // labels above their point, or below when another label already sits there; anchored so
  // that none runs off the map's edge
  const placed: { x: number; y: number }[] = [];
  for (const p of points) {
    const [x, y, r] = [px(p.c.x), py(p.c.y), p.service ? 6 : 6 + Math.min(10, p.c.h)];
    const anchor = x < size * 0.3 ? 'start' : x > size * 0.7 ? 'end' : 'middle';
    const lx = anchor === 'start' ? x - r : anchor === 'end' ? x + r : x;
    let ly = y - r - 4;
    for (let step = 0; placed.some((q) => Math.abs(q.x - lx) < 60 && Math.abs(q.y - ly) < 12) && step < 8; step++) {
      ly = step === 0 ? y + r + 12 : ly + 12;
    }
    placed.push({ x: lx, y: ly });
    const g = svg(
      'g',
      { class: `coord-point state-${p.state}`, 'data-testid': p.service ? 'coord-service' : 'coord-node', 'data-node': p.name },
      svg('title', {}, `${p.name}${p.site ? ` (${p.site})` : ''}: x ${p.c.x}, y ${p.c.y}, height ${p.c.h} ms`),
      p.service ? svg('rect', { x: x - 6, y: y - 6, width: 12, height: 12 }) : svg('circle', { cx: x, cy: y, r }),
      svg('text', { x: lx, y: ly, 'text-anchor': anchor, class: 'coord-label' }, p.name),
    );
    map.append(g);
  }
  const fmt = (v: number | undefined) => (v === undefined ? '' : v.toFixed(2));
  return h(
    'div',
    { class: 'coords' },
    map,
    h(
      'details',
      {},
      h('summary', {}, 'Coordinates as a table'),
      h(
        'div',
        { class: 'table-wrap' },
        h(
          'table',
          { 'data-testid': 'coord-table' },
          h('thead', {}, h('tr', {}, ['Node', 'Site', 'x', 'y', 'height', 'error', 'RTT ms', 'predicted ms'].map((t) => h('th', { scope: 'col' }, t)))),
          h(
            'tbody',
            {},
            nodes.map((n) =>
              h(
                'tr',
                {},
                h('td', { 'data-label': 'Node' }, n.name),
                h('td', { 'data-label': 'Site' }, n.site),
                h('td', { 'data-label': 'x' }, fmt(n.coordinate?.x)),
                h('td', { 'data-label': 'y' }, fmt(n.coordinate?.y)),
                h('td', { 'data-label': 'height' }, fmt(n.coordinate?.h)),
                h('td', { 'data-label': 'error' }, fmt(n.coordinate?.error)),
                h('td', { 'data-label': 'RTT ms' }, fmt(n.rtt_ms)),
                h('td', { 'data-label': 'predicted ms' }, fmt(n.predicted_rtt_ms)),
              ),
            ),
          ),
        ),
      ),
    ),
  );
}

const QUEUES: [string, string][] = [
  ['under_replicated', 'objects under-replicated (repair)'],
  ['awaiting_dead_delay', 'of them waiting out the dead-node delay'],
  ['bad_replicas', 'bad replicas to replace (repair)'],
  ['drain_copies', 'copies to move off draining nodes (migration)'],
  ['orphan_candidates', 'orphan chunks under watch'],
  ['compaction', 'volumes waiting for compaction (space reclaim)'],
];

const TOTALS: Record<string, string> = {
  repair_runs: 'repair runs',
  copies_made: 'copies made',
  corrupt_replaced: 'corrupt copies replaced',
  extras_removed: 'extra copies removed',
  reconciled: 'nodes reconciled',
  orphans_removed: 'orphans removed',
  adopted: 'chunks adopted',
  moved: 'copies moved',
  migrated_patients: 'patients migrated',
  rebalanced: 'copies moved to balance the nodes (rebalance)',
  volumes_compacted: 'volumes compacted',
  bytes_reclaimed: 'space reclaimed by compaction',
};

/** Totals that count bytes: shown as sizes, not raw numbers. */
const BYTE_TOTALS = new Set(['bytes_reclaimed']);

function totalValue(key: string, value: number): string {
  return BYTE_TOTALS.has(key) ? formatBytes(value) : String(value);
}

/** The repair, migration and compaction queues (depths now) and what the background work did
 * so far. */
function queues(s: ClusterStatus): HTMLElement {
  const depth: Record<string, number | undefined> = {
    under_replicated: s.under_replicated,
    awaiting_dead_delay: s.awaiting_dead_delay,
    bad_replicas: s.bad_replicas,
    ...(s.background?.queues ?? {}),
  };
  const items = QUEUES.filter(([key]) => depth[key] !== undefined);
  for (const key of Object.keys(s.background?.queues ?? {})) {
    if (!QUEUES.some(([k]) => k === key)) items.push([key, key.replaceAll('_', ' ')]);
  }
  const totals = Object.entries(s.background?.totals ?? {});
  return h(
    'section',
    { class: 'card', 'data-testid': 'queues', 'aria-labelledby': 'queues-title' },
    h('h2', { id: 'queues-title' }, 'Repair, migration and compaction queues'),
    h(
      'ul',
      { class: 'queue-list' },
      items.map(([key, label]) =>
        h('li', { 'data-testid': 'queue', 'data-queue': key, 'data-depth': String(depth[key] ?? 0), class: (depth[key] ?? 0) > 0 ? 'busy' : '' }, h('strong', {}, String(depth[key] ?? 0)), ' ', label),
      ),
    ),
    s.background
      ? h(
          'details',
          {},
          h('summary', {}, 'Background work since the service started'),
          h(
            'dl',
            { class: 'small totals', 'data-testid': 'background-totals' },
            totals.flatMap(([k, v]) => [h('dt', {}, TOTALS[k] ?? k.replaceAll('_', ' ')), h('dd', { 'data-total': k, 'data-value': String(v) }, totalValue(k, v))]),
          ),
        )
      : h('p', { class: 'small muted' }, 'The health monitor is not running in this service: nothing is repaired or moved in the background.'),
  );
}

function ago(seconds: number): string {
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

/** The catalog's own backup: when it last ran, how big, how many copies on which nodes. */
function backup(b: BackupStatus): HTMLElement {
  const rows: [string, string | HTMLElement][] = [];
  rows.push(['Schedule', b.enabled ? `every ${Math.round(b.interval_s / 60)} min` : 'off']);
  if (b.last_backup_at) {
    rows.push(['Last backup', `${new Date(b.last_backup_at).toLocaleString()}${b.age_s !== null ? ` (${ago(b.age_s)})` : ''}`]);
    rows.push(['Size', b.bytes !== null ? formatBytes(b.bytes) : 'unknown']);
    rows.push([
      'Copies',
      h('span', { class: b.copies < b.wanted ? 'warn' : '', 'data-testid': 'backup-copies' }, `${b.copies} of ${b.wanted}${b.nodes.length ? ` (${b.nodes.join(', ')})` : ''}`),
    ]);
  } else {
    rows.push(['Last backup', 'none yet']);
  }
  return h(
    'section',
    { class: 'card', 'data-testid': 'backup', 'data-last': b.last_backup_at ?? '', 'aria-labelledby': 'backup-title' },
    h('h2', { id: 'backup-title' }, 'Metadata backup'),
    h('dl', { class: 'small totals' }, rows.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])),
    b.last_error ? h('p', { class: 'msg msg-error', 'data-testid': 'backup-error' }, `Last attempt failed: ${b.last_error}`) : null,
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
    h(
      'div',
      { class: 'admin-panels' },
      queues(s),
      s.backup ? backup(s.backup) : null,
    ),
    s.nodes.some((n) => n.coordinate)
      ? [
          h('h2', {}, 'Network map'),
          h(
            'p',
            { class: 'small muted' },
            'Vivaldi coordinates from measured round-trip times: the closer two nodes, the faster they reach each other; larger circles have a larger height (access-link delay).',
            s.coordinates?.median_rtt_error != null ? ` Median prediction error ${(100 * s.coordinates.median_rtt_error).toFixed(0)}%.` : '',
          ),
          coordinateMap(s.nodes, s.coordinates?.service),
        ]
      : null,
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
