// A doctor's worklist: the studies QIDO-RS lets them see (their care-team patients), newest
// first, with search by patient name or id, date range and modality.
import { me } from '../api';
import { errorMessage, fillAiColumn, studyTable } from '../components';
import { searchStudies } from '../dicom';
import { h, message, replace } from '../dom';

const MODALITIES = ['', 'CR', 'CT', 'DX', 'MG', 'MR', 'NM', 'OT', 'PT', 'RF', 'SC', 'US', 'XA'];

function daValue(input: HTMLInputElement): string {
  return input.value.replaceAll('-', '');
}

/** The QIDO-RS matching keys for the form's fields (PS3.18 8.3.4). */
export function filtersOf(name: string, id: string, from: string, to: string, modality: string): Record<string, string> {
  const filters: Record<string, string> = {};
  const wild = (v: string) => `*${v.replace(/[*?\\]/g, '')}*`;
  if (name.trim()) filters.PatientName = wild(name.trim());
  if (id.trim()) filters.PatientID = wild(id.trim());
  if (from || to) filters.StudyDate = `${from}-${to}`;
  if (modality) filters.ModalitiesInStudy = modality;
  return filters;
}

export function render(root: HTMLElement): void {
  const role = me()?.role;
  const input = (id: string, label: string, attrs: Record<string, string> = {}) => {
    const el = h('input', { id, name: id, ...attrs });
    return [el, h('div', { class: 'field' }, h('label', { for: id }, label), el)] as const;
  };
  const [name, nameField] = input('q-name', 'Patient name', { type: 'search', placeholder: 'e.g. Smith' });
  const [pid, pidField] = input('q-id', 'Patient ID', { type: 'search' });
  const [from, fromField] = input('q-from', 'From', { type: 'date' });
  const [to, toField] = input('q-to', 'To', { type: 'date' });
  const modality = h('select', { id: 'q-modality', name: 'q-modality' }, MODALITIES.map((m) => h('option', { value: m }, m || 'Any')));
  const results = h('section', { 'aria-live': 'polite', 'data-testid': 'worklist' });
  const form = h(
    'form',
    { class: 'filters', role: 'search', 'aria-label': 'Search studies' },
    nameField,
    pidField,
    fromField,
    toField,
    h('div', { class: 'field' }, h('label', { for: 'q-modality' }, 'Modality'), modality),
    h('div', { class: 'field field-button' }, h('button', { type: 'submit', class: 'btn btn-primary' }, 'Search')),
  );
  const search = () => {
    replace(results, message('Searching…'));
    const filters = filtersOf(name.value, pid.value, daValue(from), daValue(to), modality.value);
    searchStudies(filters)
      .then((rows) => {
        const count = h('p', { class: 'muted', 'data-testid': 'result-count' }, `${rows.length} stud${rows.length === 1 ? 'y' : 'ies'}`);
        const table = rows.length ? studyTable(rows, { share: role === 'doctor', ai: true }) : null;
        if (table) void fillAiColumn(table);
        replace(
          results,
          count,
          table
            ? table
            : message(
                Object.keys(filters).length
                  ? 'No study matches this search among the patients you may see.'
                  : 'No studies yet: your care-team patients have no images, or none were shared with you.',
              ),
        );
      })
      .catch((err: unknown) => replace(results, message(errorMessage(err), 'error')));
  };
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    search();
  });
  const title = role === 'admin' ? 'Studies under emergency access' : role === 'service' ? 'Studies' : 'Worklist';
  replace(root, h('h1', {}, title), form, results);
  search();
}
