// A patient's timeline: every study and document the caller may see for one Patient ID, newest
// first, studies with thumbnails and documents with a download, plus the care team (sites and
// doctors) where the caller may read it.
import { api, ApiError, errorText, json, me } from '../api';
import { errorMessage, shareButton, viewerLink } from '../components';
import { searchStudies, thumbnailUrl, type StudyRow } from '../dicom';
import { formatBytes, formatDate, h, message, replace } from '../dom';
import type { Cleanup } from '../main';

interface CareTeam {
  patient_id: string;
  sites: { site: string; since: string; last_involved_at: string }[];
  doctors: { username: string; name: string; last_involved_at: string }[];
}

/** A document as GET /api/patients/{id}/documents lists it (its latest version). */
export interface DocumentInfo {
  id: string;
  patient_id: string;
  version: number;
  type: string;
  title: string;
  author: string;
  date: string;
  content_type: string;
  size: number;
  filename: string;
  source_site: string | null;
}

const DOC_KINDS: Record<string, string> = {
  'application/pdf': 'PDF',
  'application/hl7-cda+xml': 'CDA',
  'application/fhir+json': 'FHIR',
  'application/json': 'JSON',
  'text/plain': 'TXT',
  'image/png': 'PNG',
  'image/jpeg': 'JPEG',
};

function docKind(contentType: string): string {
  return DOC_KINDS[contentType.split(';')[0].trim()] ?? (contentType.split('/')[1] ?? 'DOC').toUpperCase().slice(0, 5);
}

/** Fetch a document with the user's token and hand it to the browser as a download (a plain
 * link cannot carry the bearer token). */
async function download(doc: DocumentInfo, status: HTMLElement): Promise<void> {
  replace(status, message('Downloading…'));
  try {
    const path = `/api/patients/${encodeURIComponent(doc.patient_id)}/documents/${encodeURIComponent(doc.id)}/content`;
    const r = await api(path);
    if (!r.ok) throw new ApiError(r.status, await errorText(r));
    const url = URL.createObjectURL(await r.blob());
    const ext = docKind(doc.content_type).toLowerCase();
    const a = h('a', { href: url, download: doc.filename || `${doc.title || doc.type || 'document'}.${ext}`, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    window.setTimeout(() => URL.revokeObjectURL(url), 60_000);
    replace(status);
  } catch (err) {
    replace(status, message(errorMessage(err), 'error'));
  }
}

function documentCard(doc: DocumentInfo): HTMLElement {
  const status = h('div', { 'aria-live': 'polite' });
  const title = doc.title || doc.type || doc.filename || 'Document';
  const when = doc.date ? new Date(doc.date) : null;
  return h(
    'li',
    { class: 'timeline-item card document', 'data-testid': 'timeline-document', 'data-document': doc.id },
    h('div', { class: 'doc-icon', 'aria-hidden': 'true' }, docKind(doc.content_type)),
    h(
      'div',
      {},
      h('h3', {}, `${when ? when.toISOString().slice(0, 10) : 'undated'} · ${title}`),
      h('p', {}, [doc.type, doc.author && `by ${doc.author}`].filter(Boolean).join(' ') || h('span', { class: 'muted' }, 'document')),
      h(
        'p',
        { class: 'muted' },
        `${docKind(doc.content_type)}, ${formatBytes(doc.size)}${doc.version > 1 ? `, version ${doc.version}` : ''}${doc.source_site ? ` · ${doc.source_site}` : ''}`,
      ),
      h(
        'div',
        { class: 'row' },
        h(
          'button',
          {
            type: 'button',
            class: 'btn btn-small',
            'data-testid': 'download-document',
            'aria-label': `Download ${title}`,
            onclick: () => void download(doc, status),
          },
          'Download',
        ),
      ),
      status,
    ),
  );
}

/** The patient's documents the caller may see; none when they may see none (403/404). */
async function patientDocuments(patientId: string): Promise<DocumentInfo[]> {
  try {
    const r = await json<{ documents: DocumentInfo[] }>(`/api/patients/${encodeURIComponent(patientId)}/documents`);
    return r.documents;
  } catch (err) {
    if (err instanceof ApiError && (err.status === 403 || err.status === 404)) return [];
    throw err;
  }
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

/** Studies and documents in one timeline, newest first, grouped by year. */
export async function timeline(patientId: string, urls: string[]): Promise<HTMLElement> {
  const [rows, docs] = await Promise.all([searchStudies({ PatientID: patientId }), patientDocuments(patientId)]);
  if (!rows.length && !docs.length) {
    return message('No study of this patient is visible to you.');
  }
  // sort keys comparable across both: YYYYMMDDHHMMSS
  const items: { key: string; make: () => HTMLElement }[] = [
    ...rows.map((r) => ({ key: (r.date + r.time.replace(/\D/g, '')).padEnd(14, '0').slice(0, 14), make: () => studyCard(r, urls) })),
    ...docs.map((d) => ({ key: d.date.replace(/\D/g, '').padEnd(14, '0').slice(0, 14), make: () => documentCard(d) })),
  ];
  items.sort((a, b) => b.key.localeCompare(a.key));
  const byYear = new Map<string, HTMLElement[]>();
  for (const item of items) {
    const year = item.key.startsWith('0000') ? 'Undated' : item.key.slice(0, 4);
    byYear.set(year, [...(byYear.get(year) ?? []), item.make()]);
  }
  return h(
    'div',
    { class: 'timeline', 'data-testid': 'timeline' },
    rows.length ? null : message('No study of this patient is visible to you; their documents are below.'),
    [...byYear].map(([year, cards]) => h('section', {}, h('h2', { class: 'year' }, year), h('ol', { class: 'timeline-list' }, cards))),
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
