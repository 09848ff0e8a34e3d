// Upload: drag and drop DICOM files or whole folders (or pick them); each file goes to the
// archive by STOW-RS with its own progress bar, an overall bar, and a clear outcome per file.
import { h, message, replace, formatBytes } from '../dom';
import { storeFile, type StowResult } from '../stow';

const PARALLEL = 3;

interface Item {
  file: File;
  path: string;
  loaded: number;
  row: HTMLElement;
  bar: HTMLProgressElement;
  state: HTMLElement;
}

/** Every file under dropped entries, folders walked recursively. */
async function filesOf(transfer: DataTransfer): Promise<{ file: File; path: string }[]> {
  const items = transfer.items;
  const out: { file: File; path: string }[] = [];
  const walk = async (entry: FileSystemEntry | null): Promise<void> => {
    if (!entry) return;
    if (entry.isFile) {
      const file = await new Promise<File>((ok, fail) => (entry as FileSystemFileEntry).file(ok, fail));
      out.push({ file, path: entry.fullPath.replace(/^\//, '') });
    } else if (entry.isDirectory) {
      const reader = (entry as FileSystemDirectoryEntry).createReader();
      for (;;) {
        const batch = await new Promise<FileSystemEntry[]>((ok, fail) => reader.readEntries(ok, fail));
        if (!batch.length) break;
        for (const child of batch) await walk(child);
      }
    }
  };
  const entries = [...items].filter((i) => i.kind === 'file').map((i) => i.webkitGetAsEntry());
  if (!entries.length || entries.some((e) => e === null)) {
    // no file-system entries (an older browser, a synthetic drop): the flat list of files
    return [...transfer.files].map((file) => ({ file, path: file.name }));
  }
  for (const entry of entries) await walk(entry);
  return out;
}

export function render(root: HTMLElement): void {
  const overall = h('progress', { max: 1, value: 0, 'aria-label': 'Overall upload progress', 'data-testid': 'overall-progress' });
  const summary = h('p', { 'aria-live': 'polite', 'data-testid': 'upload-summary' });
  const list = h('ol', { class: 'uploads', 'data-testid': 'uploads' });
  const files = h('input', { type: 'file', multiple: true, id: 'pick-files', 'data-testid': 'file-input', class: 'visually-hidden' });
  const folder = h('input', { type: 'file', multiple: true, webkitdirectory: true, id: 'pick-folder', class: 'visually-hidden' });
  const zone = h(
    'div',
    { class: 'dropzone', tabindex: '0', role: 'button', 'aria-label': 'Drop DICOM files or folders here, or press Enter to choose files', 'data-testid': 'dropzone' },
    h('p', { class: 'big' }, 'Drop DICOM files or folders here'),
    h(
      'p',
      {},
      h('label', { for: 'pick-files', class: 'btn' }, 'Choose files'),
      ' ',
      h('label', { for: 'pick-folder', class: 'btn btn-quiet' }, 'Choose a folder'),
    ),
  );
  let items: Item[] = [];
  let totalBytes = 0;
  const counts = { stored: 0, duplicate: 0, rejected: 0 };

  const refresh = () => {
    const loaded = items.reduce((n, i) => n + i.loaded, 0);
    overall.max = Math.max(1, totalBytes);
    overall.value = loaded;
    const done = counts.stored + counts.duplicate + counts.rejected;
    summary.textContent = items.length
      ? `${done} of ${items.length} files · ${counts.stored} stored, ${counts.duplicate} duplicate, ${counts.rejected} rejected · ${formatBytes(loaded)} of ${formatBytes(totalBytes)}`
      : '';
  };

  const finish = (item: Item, result: StowResult) => {
    counts[result.outcome]++;
    item.row.dataset.outcome = result.outcome;
    item.row.classList.add(`outcome-${result.outcome}`);
    replace(
      item.state,
      h('strong', { 'data-testid': 'outcome' }, result.outcome),
      result.reason ? h('span', { class: 'reason', 'data-testid': 'reason' }, ` — ${result.reason}`) : null,
      result.study ? [' ', h('a', { href: `#/studies/${result.study}` }, 'view')] : null,
    );
  };

  const start = (picked: { file: File; path: string }[]) => {
    const fresh = picked.map(({ file, path }) => {
      const bar = h('progress', { max: Math.max(1, file.size), value: 0, 'aria-label': `Upload of ${path}` });
      const state = h('span', { class: 'state' }, 'waiting');
      const row = h('li', { class: 'upload', 'data-testid': 'upload', 'data-name': file.name }, h('span', { class: 'name' }, path), bar, state);
      list.append(row);
      return { file, path, loaded: 0, row, bar, state };
    });
    items = [...items, ...fresh];
    totalBytes += fresh.reduce((n, i) => n + i.file.size, 0);
    refresh();
    const queue = [...fresh];
    const worker = async () => {
      for (let item = queue.shift(); item; item = queue.shift()) {
        const it = item;
        replace(it.state, 'uploading');
        try {
          const result = await storeFile(it.file, (loaded) => {
            it.loaded = loaded;
            it.bar.value = loaded;
            refresh();
          });
          finish(it, result);
        } catch (err) {
          finish(it, { outcome: 'rejected', reason: err instanceof Error ? err.message : String(err) });
        }
        refresh();
      }
    };
    for (let i = 0; i < Math.min(PARALLEL, fresh.length); i++) void worker();
  };

  zone.addEventListener('dragover', (e) => {
    e.preventDefault();
    zone.classList.add('over');
  });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    zone.classList.remove('over');
    if (e.dataTransfer) void filesOf(e.dataTransfer).then(start);
  });
  zone.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault();
      files.click();
    }
  });
  for (const input of [files, folder]) {
    input.addEventListener('change', () => {
      start([...(input.files ?? [])].map((file) => ({ file, path: file.webkitRelativePath || file.name })));
      input.value = '';
    });
  }
  replace(
    root,
    h('h1', {}, 'Upload'),
    message('Files are stored under your site and become visible to the patients’ care teams. Non-DICOM files are refused.'),
    zone,
    files,
    folder,
    h('div', { class: 'overall' }, h('label', {}, 'Overall'), overall),
    summary,
    list,
  );
}
