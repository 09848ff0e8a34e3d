// A patient's own page: their studies, and who accessed their records and when (GET
// /api/audit/me, from the hash-chained audit log).
import { json, me } from '../api';
import { errorMessage } from '../components';
import { h, message, replace } from '../dom';
import type { Cleanup } from '../main';
import { timeline } from './patient';

interface AccessEvent {
  seq: number;
  at: string;
  actor: string;
  role: string;
  action: string;
  outcome: string;
  detail: string;
  flagged: boolean;
  study: string | null;
}

const ACTIONS: Record<string, string> = {
  query: 'searched',
  read: 'opened',
  retrieve: 'opened',
  store: 'stored images',
  share: 'shared a study',
  'break-glass': 'broke the glass',
  'audit-me': 'read this log',
  findings: 'read AI findings',
  'careteam-show': 'read the care team',
  'document-list': 'listed documents',
  'document-read': 'opened a document',
  'document-store': 'stored a document',
};

function accessLog(events: AccessEvent[]): HTMLElement {
  if (!events.length) return message('Nobody has accessed your records yet.');
  return h(
    'div',
    { class: 'table-wrap' },
    h(
      'table',
      { class: 'log', 'data-testid': 'access-log' },
      h('thead', {}, h('tr', {}, ['When', 'Who', 'Role', 'What', 'Outcome'].map((t) => h('th', { scope: 'col' }, t)))),
      h(
        'tbody',
        {},
        events.map((e) =>
          h(
            'tr',
            { class: e.flagged ? 'flagged' : '', 'data-testid': 'access-event', 'data-actor': e.actor },
            h('td', { 'data-label': 'When' }, new Date(e.at).toLocaleString()),
            h('td', { 'data-label': 'Who' }, e.actor),
            h('td', { 'data-label': 'Role' }, e.role),
            h('td', { 'data-label': 'What' }, `${ACTIONS[e.action] ?? e.action}${e.flagged ? ' (emergency access)' : ''}`),
            h('td', { 'data-label': 'Outcome' }, e.outcome),
          ),
        ),
      ),
    ),
  );
}

export async function render(root: HTMLElement): Promise<Cleanup> {
  const urls: string[] = [];
  const who = me();
  const studies = h('section', { 'aria-live': 'polite' }, message('Loading…'));
  const log = h('section', { 'aria-live': 'polite' }, message('Loading…'));
  replace(
    root,
    h('h1', {}, 'My records'),
    h('div', { class: 'split' }, h('div', {}, h('h2', {}, 'My studies'), studies), h('div', {}, h('h2', {}, 'Who accessed my records'), log)),
  );
  if (who?.patient_id) {
    timeline(who.patient_id, urls)
      .then((el) => replace(studies, el))
      .catch((err: unknown) => replace(studies, message(errorMessage(err), 'error')));
  } else {
    replace(studies, message('Your account is not linked to a patient record.'));
  }
  json<{ events: AccessEvent[] }>('/api/audit/me?limit=5000')
    .then((r) => replace(log, accessLog([...r.events].reverse().slice(0, 300))))
    .catch((err: unknown) => replace(log, message(errorMessage(err), 'error')));
  return () => urls.forEach((u) => URL.revokeObjectURL(u));
}
