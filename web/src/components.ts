// Pieces several views share: the study table, the share dialog.
import { ApiError, json, me } from './api';
import { formatDate, h, message, replace } from './dom';
import type { StudyRow } from './dicom';

export function errorMessage(err: unknown): string {
  if (err instanceof ApiError && err.status === 403) return `Not allowed: ${err.message}`;
  return err instanceof Error ? err.message : String(err);
}

/** A link to the viewer of a study. */
export function viewerLink(uid: string, label = 'View'): HTMLAnchorElement {
  return h('a', { class: 'btn btn-small', href: `#/studies/${uid}`, 'data-testid': 'open-study' }, label);
}

/** What POST /api/findings/summary says of one study. */
export interface AiSummary {
  state: 'done' | 'pending' | 'failed';
  label?: string;
  positive?: boolean;
  probability?: number;
  threshold?: number;
  model?: string;
  model_id?: string;
  findings?: number;
  pending?: boolean;
}

/** The AI cell of a study: its headline finding, or where its analysis stands. */
export function aiCell(cell: HTMLElement, ai: AiSummary | undefined): void {
  cell.dataset.ai = ai?.state ?? 'none';
  if (!ai) {
    replace(cell, h('span', { class: 'muted' }, '—'));
    cell.title = 'No AI analysis for this study';
    return;
  }
  if (ai.state === 'pending') {
    replace(cell, h('span', { class: 'muted' }, 'analysing…'));
    return;
  }
  if (ai.state === 'failed') {
    replace(cell, h('span', { class: 'muted' }, 'analysis failed'));
    return;
  }
  const more = (ai.findings ?? 1) > 1 ? ` (+${(ai.findings ?? 1) - 1})` : '';
  cell.title = `${ai.model_id ?? ai.model ?? ''}: probability ${ai.probability?.toFixed(3)}, threshold ${ai.threshold?.toFixed(3)}`;
  replace(
    cell,
    h('span', { class: ai.positive ? 'ai-positive' : 'ai-negative', 'data-testid': 'ai-label' }, ai.label ?? ''),
    ' ',
    h('span', { class: 'small', 'data-testid': 'ai-probability' }, `${((ai.probability ?? 0) * 100).toFixed(0)}%`),
    more,
  );
}

/** Fill the AI cells of a study table with one request for all its studies. */
export async function fillAiColumn(table: HTMLElement): Promise<void> {
  const cells = new Map<string, HTMLElement>();
  for (const cell of table.querySelectorAll<HTMLElement>('td[data-ai-study]')) cells.set(cell.dataset.aiStudy ?? '', cell);
  if (!cells.size) return;
  try {
    const r = await json<{ studies: Record<string, AiSummary> }>('/api/findings/summary', {
      method: 'POST',
      body: JSON.stringify({ studies: [...cells.keys()] }),
    });
    for (const [uid, cell] of cells) aiCell(cell, r.studies[uid]);
  } catch {
    for (const cell of cells.values()) {
      cell.dataset.ai = 'error';
      replace(cell, h('span', { class: 'muted', title: 'AI findings could not be loaded' }, '?'));
    }
  }
}

/** Studies as a table that turns into cards on a narrow screen (see style.css). With `ai`,
 * an AI column that {@link fillAiColumn} fills once the table is on the page. */
export function studyTable(rows: StudyRow[], opts: { patientLinks?: boolean; share?: boolean; ai?: boolean } = {}): HTMLElement {
  const { patientLinks = true, share = false, ai = false } = opts;
  const head = h(
    'tr',
    {},
    ['Patient', 'Patient ID', 'Date', 'Modality', 'Description', 'Images', ...(ai ? ['AI'] : []), ''].map((t) =>
      h('th', { scope: 'col', title: t === 'AI' ? 'AI finding: label and probability' : null }, t),
    ),
  );
  const body = rows.map((row) =>
    h(
      'tr',
      { 'data-testid': 'study-row', 'data-study': row.uid, 'data-patient': row.patientId },
      h(
        'td',
        { 'data-label': 'Patient' },
        patientLinks && row.patientId
          ? h('a', { href: `#/patients/${encodeURIComponent(row.patientId)}` }, row.patientName || '(no name)')
          : row.patientName || '(no name)',
      ),
      h('td', { 'data-label': 'Patient ID' }, row.patientId),
      h('td', { 'data-label': 'Date' }, formatDate(row.date)),
      h('td', { 'data-label': 'Modality' }, row.modalities.join(', ')),
      h('td', { 'data-label': 'Description' }, row.description),
      h('td', { 'data-label': 'Images' }, `${row.series} series, ${row.instances}`),
      ai ? h('td', { 'data-label': 'AI', 'data-testid': 'ai-cell', 'data-ai-study': row.uid }, h('span', { class: 'muted' }, '…')) : null,
      h('td', { class: 'actions' }, viewerLink(row.uid), share ? shareButton(row.uid) : null),
    ),
  );
  return h(
    'div',
    { class: 'table-wrap' },
    h('table', { class: 'studies', 'data-testid': 'study-table' }, h('thead', {}, head), h('tbody', {}, body)),
  );
}

export function shareButton(study: string): HTMLButtonElement {
  return h(
    'button',
    { type: 'button', class: 'btn btn-small btn-quiet', 'data-testid': 'share-study', onclick: () => openShareDialog(study) },
    'Share…',
  );
}

/** Share a study with an expert for N days (POST /api/shares); only doctors see the button. */
export function openShareDialog(study: string): void {
  if (me()?.role !== 'doctor') return;
  const expert = h('input', { id: 'share-expert', name: 'expert', required: true, autocomplete: 'off' });
  const days = h('input', { id: 'share-days', name: 'days', type: 'number', min: '1', max: '365', value: '7', required: true });
  const status = h('div', { 'aria-live': 'polite' });
  const dialog = h('dialog', { class: 'card', 'aria-labelledby': 'share-title', 'data-testid': 'share-dialog' });
  const form = h(
    'form',
    { method: 'dialog' },
    h('h2', { id: 'share-title' }, 'Share with an expert'),
    h('p', { class: 'muted mono' }, study),
    h('label', { for: 'share-expert' }, 'Expert username'),
    expert,
    h('label', { for: 'share-days' }, 'Days'),
    days,
    h(
      'div',
      { class: 'row' },
      h('button', { type: 'submit', class: 'btn btn-primary', value: 'share' }, 'Share'),
      h('button', { type: 'button', class: 'btn btn-quiet', onclick: () => dialog.close() }, 'Close'),
    ),
    status,
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    replace(status, message('Sharing…'));
    json<{ expires_at: string }>('/api/shares', {
      method: 'POST',
      body: JSON.stringify({ study, expert: expert.value.trim(), days: Number(days.value) }),
    })
      .then((r) => replace(status, message(`Shared with ${expert.value.trim()} until ${new Date(r.expires_at).toLocaleString()}.`, 'ok')))
      .catch((err: unknown) => replace(status, message(errorMessage(err), 'error')));
  });
  dialog.append(form);
  dialog.addEventListener('close', () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
  expert.focus();
}
