// A patient's timeline: every study the caller may see for one Patient ID, newest first, with
// thumbnails, plus the care team (sites and doctors) where the caller may read it.
import { ApiError, json, me } from '../api';
import { errorMessage, shareButton, viewerLink } from '../components';
import { searchStudies, thumbnailUrl, type StudyRow } from '../dicom';
import { formatDate, h, message, replace } from '../dom';
import type { Cleanup } from '../main';

interface CareTeam {
  patient_id: string;
  sites: { site: string; since: string; last_involved_at: string }[];
  doctors: { username: string; name: string; last_involved_at: string }[];
}

function studyCard(row: StudyRow, urls: string[]): HTMLElement {
  const img = h('img', { alt: '', class: 'thumb', width: 96, height: 96 });
  void thumbnailUrl(`/studies/${row.uid}`).then((url) => {
    if (url) {
      urls.push(url);
      img.src = url;
      img.alt = `First image of the ${row.modalities.join('/')} study of ${formatDate(row.date)}`;
    }
  });
  return h(
    'li',
    { class: 'timeline-item card', 'data-testid': 'timeline-study', 'data-study': row.uid },
    img,
    h(
      'div',
      {},
      h('h3', {}, `${formatDate(row.date) || 'undated'} · ${row.modalities.join(', ') || 'study'}`),
      h('p', {}, row.description || h('span', { class: 'muted' }, 'no description')),
      h('p', { class: 'muted' }, `${row.series} series, ${row.instances} images`),
      h('div', { class: 'row' }, viewerLink(row.uid, 'Open viewer'), me()?.role === 'doctor' ? shareButton(row.uid) : null),
    ),
  );
}

export async function timeline(patientId: string, urls: string[]): Promise<HTMLElement> {
  const rows = await searchStudies({ PatientID: patientId });
  if (!rows.length) {
    return message('No study of this patient is visible to you.');
  }
  const byYear = new Map<string, StudyRow[]>();
  for (const row of rows) {
    const year = row.date.slice(0, 4) || 'Undated';
    byYear.set(year, [...(byYear.get(year) ?? []), row]);
  }
  return h(
    'div',
    { class: 'timeline', 'data-testid': 'timeline' },
    [...byYear].map(([year, items]) =>
      h('section', {}, h('h2', { class: 'year' }, year), h('ol', { class: 'timeline-list' }, items.map((r) => studyCard(r, urls)))),
    ),
  );
}

function careTeam(team: CareTeam): HTMLElement {
  const when = (s: string) => (s ? ` (last ${new Date(s).toLocaleDateString()})` : '');
  return h(
    'section',
    { class: 'card', 'data-testid': 'careteam' },
    h('h2', {}, 'Care team'),
    h('p', {}, h('strong', {}, 'Sites: '), team.sites.map((s) => `${s.site}${when(s.last_involved_at)}`).join(', ') || '—'),
    h(
      'p',
      {},
      h('strong', {}, 'Doctors: '),
      team.doctors.map((d) => `${d.name || d.username}${when(d.last_involved_at)}`).join(', ') || '—',
    ),
  );
}

export async function render(root: HTMLElement, [patientId]: string[]): Promise<Cleanup> {
  const urls: string[] = [];
  const role = me()?.role;
  const body = h('div', { 'aria-live': 'polite' }, message('Loading…'));
  const side = h('div');
  replace(root, h('h1', {}, `Patient ${patientId}`), h('div', { class: 'split' }, body, side));
  try {
    const rows = await timeline(patientId, urls);
    replace(body, rows);
    const none = !rows.querySelector('[data-testid="timeline-study"]');
    if (none && (role === 'doctor' || role === 'admin')) {
      body.append(
        h('p', {}, 'In an emergency you may ', h('a', { href: `#/break-glass/${encodeURIComponent(patientId)}` }, 'break the glass'), ' for this patient.'),
      );
    }
  } catch (err) {
    replace(body, message(errorMessage(err), 'error'));
  }
  if (role === 'doctor' || role === 'admin') {
    json<CareTeam>(`/api/patients/${encodeURIComponent(patientId)}/careteam`)
      .then((team) => replace(side, careTeam(team)))
      .catch((err: unknown) => {
        if (!(err instanceof ApiError && (err.status === 404 || err.status === 403))) {
          replace(side, message(errorMessage(err), 'error'));
        }
      });
  }
  return () => urls.forEach((u) => URL.revokeObjectURL(u));
}
