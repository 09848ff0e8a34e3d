// The viewer: series thumbnails, a Cornerstone3D stack viewport (scroll, window/level by drag and
// presets, zoom, pan, invert, reset; keyboard too), the DICOM tags of the image shown, and the
// AI findings of the study beside it.
import dcmjs from 'dcmjs';
import { ApiError, json, me } from '../api';
import { errorMessage, openShareDialog } from '../components';
import { DICOMWEB, TAG, dicomJson, num, searchStudies, studySeries, text, texts, thumbnailUrl, type Dataset, type SeriesRow } from '../dicom';
import { formatDate, h, message, replace } from '../dom';
import type { Cleanup } from '../main';
import { Enums, StackViewer, type PrimaryTool } from '../cornerstone';

interface Finding {
  sop_instance_uid: string;
  series_instance_uid: string;
  model: string;
  model_id: string;
  model_sha256: string;
  label: string;
  positive: boolean;
  probability: number;
  threshold: number;
  created_at: string;
  sr_url: string | null;
}

interface Job {
  sop_instance_uid: string;
  model: string;
  state: string;
  error: string | null;
}

const PRESETS: [string, number, number][] = [
  ['Soft tissue', 400, 40],
  ['Lung', 1500, -600],
  ['Bone', 2000, 300],
  ['Brain', 80, 40],
  ['Abdomen', 350, 50],
];

function tagName(tag: string): string {
  return dcmjs.data.DicomMetaDictionary.dictionary[tag]?.name ?? '';
}

function tagRows(ds: Dataset, depth = 0): HTMLElement[] {
  const rows: HTMLElement[] = [];
  for (const tag of Object.keys(ds).sort()) {
    const el = ds[tag];
    let value: string;
    if (el.BulkDataURI) value = '(bulk data)';
    else if (el.InlineBinary) value = `(binary, ${Math.floor((el.InlineBinary.length * 3) / 4)} bytes)`;
    else value = texts(ds, tag).join(' \\ ');
    const label = `(${tag.slice(0, 4)},${tag.slice(4)})`;
    rows.push(
      h(
        'tr',
        { 'data-tag': tag },
        h('td', { class: 'mono', style: `padding-left:${0.4 + depth}rem` }, label),
        h('td', {}, tagName(tag)),
        h('td', { class: 'mono' }, el.vr),
        h('td', { class: 'value' }, value.length > 200 ? `${value.slice(0, 200)}…` : value),
      ),
    );
    if (el.vr === 'SQ' && depth < 2) {
      for (const item of (el.Value ?? []) as Dataset[]) rows.push(...tagRows(item, depth + 1));
    }
  }
  return rows;
}

/** The JSON model card (GET /api/models/{name}/card); only the fields shown are typed. */
interface ModelCard {
  name: string;
  model_id?: string;
  sha256?: string;
  created?: string;
  task?: string;
  classes?: string[];
  positive_class?: string;
  intended_use?: string;
  limitations?: string[];
  threshold?: number;
  prior?: { default?: number; why?: string };
  calibration?: { method?: string };
  operating_point?: { name?: string };
  architecture?: { name?: string; parameters?: number; members?: number };
  expected_performance?: {
    method?: string;
    n?: number;
    metrics?: Record<string, number>;
    ci95?: Record<string, [number, number]>;
  };
  data?: { name?: string; licence?: string; citation?: string };
  sha256_matches?: boolean | null;
}

function pct(v: number | undefined): string {
  return v === undefined ? '' : `${(100 * v).toFixed(1)}%`;
}

/** The model card of a finding's model, in a dialog; the finding's weights hash is sent so the
 * server can say whether the card describes the weights that made it. */
export function openModelCard(f: Finding, opener: HTMLElement): void {
  const name = f.model.split(/[\\/]/).filter(Boolean).pop() ?? f.model;
  const body = h('div', { 'aria-live': 'polite' }, message('Loading the model card…'));
  const close = h('button', { type: 'button', class: 'btn', onclick: () => dialog.close() }, 'Close');
  const dialog = h(
    'dialog',
    { class: 'card model-card', 'aria-labelledby': 'model-card-title', 'data-testid': 'model-card' },
    h('h2', { id: 'model-card-title' }, `Model card: ${name}`),
    body,
    h('div', { class: 'row' }, close),
  );
  dialog.addEventListener('close', () => {
    dialog.remove();
    opener.focus();
  });
  document.body.append(dialog);
  dialog.showModal();
  close.focus();
  const query = new URLSearchParams({ sha256: f.model_sha256 });
  json<ModelCard>(`/api/models/${encodeURIComponent(name)}/card?${query}`)
    .then((card) => {
      const perf = card.expected_performance;
      const metrics = Object.entries(perf?.metrics ?? {});
      replace(
        body,
        card.sha256_matches === false
          ? message('This card describes other weights than those that made the finding: the finding was made by an earlier or another version of the model.', 'error')
          : null,
        h(
          'dl',
          { class: 'small totals', 'data-testid': 'model-card-facts' },
          ([
            ['Model', card.model_id ?? card.name],
            ['Task', card.task ?? ''],
            ['Classes', (card.classes ?? []).join(', ')],
            ['Architecture', card.architecture ? `${card.architecture.name ?? ''}, ${card.architecture.members ?? 1} member(s), ${card.architecture.parameters ?? '?'} parameters` : ''],
            ['Threshold', card.threshold !== undefined ? `${card.threshold.toFixed(3)} (${card.operating_point?.name ?? 'operating point'})` : ''],
            ['Prior', card.prior?.default !== undefined ? String(card.prior.default) : ''],
            ['Calibration', card.calibration?.method ?? ''],
            ['Training data', [card.data?.name, card.data?.licence].filter(Boolean).join(', ')],
            ['Created', card.created ? new Date(card.created).toLocaleString() : ''],
            ['Weights SHA-256', card.sha256 ?? ''],
          ] as [string, string][])
            .filter(([, v]) => v)
            .flatMap(([k, v]) => [h('dt', {}, k), h('dd', { class: k === 'Weights SHA-256' ? 'mono' : null }, v)]),
        ),
        card.intended_use ? [h('h3', {}, 'Intended use'), h('p', { 'data-testid': 'model-card-intended-use' }, card.intended_use)] : null,
        metrics.length
          ? [
              h('h3', {}, 'Expected performance'),
              h('p', { class: 'small muted' }, `${perf?.method ?? ''}${perf?.n ? ` (n = ${perf.n})` : ''}`),
              h(
                'div',
                { class: 'table-wrap' },
                h(
                  'table',
                  { 'data-testid': 'model-card-metrics' },
                  h('thead', {}, h('tr', {}, ['Metric', 'Value', '95% CI'].map((t) => h('th', { scope: 'col' }, t)))),
                  h(
                    'tbody',
                    {},
                    metrics.map(([k, v]) => {
                      const ci = perf?.ci95?.[k];
                      return h('tr', { 'data-metric': k }, h('td', {}, k.replaceAll('_', ' ')), h('td', {}, pct(v)), h('td', {}, ci ? `${pct(ci[0])} – ${pct(ci[1])}` : ''));
                    }),
                  ),
                ),
              ),
            ]
          : null,
        card.limitations?.length ? [h('h3', {}, 'Limitations'), h('ul', { class: 'small', 'data-testid': 'model-card-limitations' }, card.limitations.map((l) => h('li', {}, l)))] : null,
      );
    })
    .catch((err: unknown) => replace(body, message(errorMessage(err), 'error')));
}

function findingsPanel(findings: Finding[], jobs: Job[], jump: (series: string, sop: string) => void): HTMLElement {
  const section = h('section', { class: 'card findings', 'data-testid': 'findings', 'aria-labelledby': 'findings-title' }, h('h2', { id: 'findings-title' }, 'AI findings'));
  for (const f of findings) {
    section.append(
      h(
        'div',
        { class: `finding ${f.positive ? 'positive' : 'negative'}`, 'data-testid': 'finding' },
        h('p', {}, h('strong', { 'data-testid': 'finding-label' }, f.label), ' ', h('span', { class: `badge ${f.positive ? 'badge-dead' : 'badge-alive'}` }, f.positive ? 'above threshold' : 'below threshold')),
        h('meter', { min: 0, max: 1, value: f.probability, low: f.threshold, optimum: 0, 'aria-label': 'probability' }),
        h('p', { 'data-testid': 'finding-probability' }, `probability ${f.probability.toFixed(3)} · threshold ${f.threshold.toFixed(3)}`),
        h(
          'p',
          { class: 'small' },
          `model ${f.model} (${f.model_id}) · `,
          h(
            'button',
            {
              type: 'button',
              class: 'btn btn-small btn-quiet',
              'data-testid': 'open-model-card',
              'aria-haspopup': 'dialog',
              onclick: (e: Event) => openModelCard(f, e.currentTarget as HTMLElement),
            },
            'Model card',
          ),
        ),
        h(
          'details',
          {},
          h('summary', {}, 'About this finding'),
          h(
            'dl',
            { class: 'small' },
            h('dt', {}, 'Model'), h('dd', {}, f.model),
            h('dt', {}, 'Version'), h('dd', {}, f.model_id),
            h('dt', {}, 'Weights SHA-256'), h('dd', { class: 'mono' }, f.model_sha256),
            h('dt', {}, 'Decision threshold'), h('dd', {}, String(f.threshold)),
            h('dt', {}, 'Analysed'), h('dd', {}, new Date(f.created_at).toLocaleString()),
            h('dt', {}, 'Structured report'), h('dd', {}, f.sr_url ? 'stored as DICOM SR in this study' : 'none'),
          ),
          h('p', { class: 'small muted' }, 'A decision aid, not a diagnosis: the finding flags images for a radiologist to read first.'),
        ),
        h('button', { type: 'button', class: 'btn btn-small', onclick: () => jump(f.series_instance_uid, f.sop_instance_uid) }, 'Show analysed image'),
      ),
    );
  }
  const analysed = new Set(findings.map((f) => f.sop_instance_uid));
  const open = jobs.filter((j) => !analysed.has(j.sop_instance_uid));
  for (const j of open) {
    const what = j.state === 'failed' ? `analysis failed: ${j.error ?? 'unknown reason'}` : j.state === 'skipped' ? `not eligible: ${j.error ?? ''}` : `analysis ${j.state}`;
    section.append(h('p', { class: 'small', 'data-testid': 'job' }, `${j.model}: ${what}`));
  }
  if (!findings.length && !open.length) section.append(h('p', { class: 'muted' }, 'No AI analysis for this study.'));
  return section;
}

export async function render(root: HTMLElement, [study]: string[]): Promise<Cleanup> {
  const urls: string[] = [];
  let viewer: StackViewer | null = null;
  let observer: ResizeObserver | null = null;
  let instancesById = new Map<string, Dataset>();
  let currentSeries = '';
  const cleanup = () => {
    observer?.disconnect();
    viewer?.destroy();
    viewer = null;
    urls.forEach((u) => URL.revokeObjectURL(u));
  };

  replace(root, h('h1', {}, 'Viewer'), message('Loading study…'));
  let rows;
  try {
    rows = await searchStudies({ StudyInstanceUID: study });
  } catch (err) {
    replace(root, h('h1', {}, 'Viewer'), message(errorMessage(err), 'error'));
    return cleanup;
  }
  if (!rows.length) {
    replace(root, h('h1', {}, 'Viewer'), h('div', { 'data-testid': 'not-found' }, message('This study does not exist, or you are not allowed to see it.', 'error')));
    return cleanup;
  }
  const info = rows[0];
  const series = (await studySeries(study)).filter((s) => s.modality !== 'SR');

  // ---------------------------------------------------------------- layout
  const element = h('div', { class: 'viewport-element', oncontextmenu: (e: Event) => e.preventDefault() });
  const stage = h(
    'div',
    {
      class: 'viewport',
      tabindex: '0',
      role: 'application',
      'aria-roledescription': 'image viewer',
      'aria-label': 'Image. Arrow keys or Page Up/Down change slice, + and - zoom, I inverts, R resets, W, P and Z choose the drag tool.',
      'data-testid': 'viewport',
      'data-ready': 'false',
    },
    element,
  );
  const overlay = h('div', { class: 'overlay', 'aria-live': 'off', 'data-testid': 'overlay' });
  const slider = h('input', { type: 'range', min: '1', max: '1', value: '1', 'aria-label': 'Slice', class: 'slider', 'data-testid': 'slice-slider' });
  const toolButtons = new Map<PrimaryTool, HTMLButtonElement>();
  const toolButton = (tool: PrimaryTool, label: string, key: string) => {
    const b = h('button', { type: 'button', class: 'btn btn-small', 'aria-pressed': String(tool === 'WindowLevel'), title: `${label} (${key})`, 'data-tool': tool, onclick: () => choose(tool) }, label);
    toolButtons.set(tool, b);
    return b;
  };
  const presets = h(
    'select',
    { 'aria-label': 'Window preset', 'data-testid': 'preset' },
    h('option', { value: '' }, 'Window preset…'),
    h('option', { value: 'default' }, 'Default (from image)'),
    PRESETS.map(([name, ww, wc]) => h('option', { value: `${ww}/${wc}` }, `${name} ${ww}/${wc}`)),
  );
  const button = (label: string, title: string, action: () => void, testid?: string) =>
    h('button', { type: 'button', class: 'btn btn-small btn-quiet', title, 'aria-label': title, onclick: action, 'data-testid': testid ?? null }, label);
  const toolbar = h(
    'div',
    { class: 'toolbar', role: 'toolbar', 'aria-label': 'Viewer tools' },
    h('div', { class: 'group', role: 'group', 'aria-label': 'Drag tool' }, toolButton('WindowLevel', 'W/L', 'W'), toolButton('Pan', 'Pan', 'P'), toolButton('Zoom', 'Zoom', 'Z')),
    presets,
    button('−', 'Zoom out (-)', () => zoom(1 / 1.25)),
    button('+', 'Zoom in (+)', () => zoom(1.25)),
    button('Invert', 'Invert (I)', () => invert(), 'invert'),
    button('Reset', 'Reset (R)', () => reset(), 'reset'),
    button('◀', 'Previous slice', () => scroll(-1)),
    button('▶', 'Next slice', () => scroll(1)),
  );
  const seriesList = h('ul', { class: 'series-list', 'aria-label': 'Series', 'data-testid': 'series-list' });
  const tagFilter = h('input', { type: 'search', placeholder: 'Filter tags', 'aria-label': 'Filter tags' });
  const tagBody = h('tbody');
  const tags = h(
    'details',
    { class: 'card tags', 'data-testid': 'tags', open: window.innerWidth > 900 },
    h('summary', {}, h('h2', {}, 'DICOM tags')),
    tagFilter,
    h('div', { class: 'table-wrap tag-table' }, h('table', {}, h('thead', {}, h('tr', {}, ['Tag', 'Name', 'VR', 'Value'].map((t) => h('th', { scope: 'col' }, t)))), tagBody)),
  );
  const findings = h('div', {}, h('section', { class: 'card' }, h('h2', {}, 'AI findings'), message('Loading…')));
  const status = h('div', { 'aria-live': 'polite' });
  const who = me();
  replace(
    root,
    h(
      'div',
      { class: 'viewer', 'data-testid': 'viewer' },
      h(
        'header',
        { class: 'viewer-head' },
        h('h1', {}, info.patientName || 'Unnamed patient', h('span', { class: 'muted' }, ` · ${info.patientId}`)),
        h('p', {}, `${formatDate(info.date)} · ${info.modalities.join(', ')} · ${info.description || 'no description'}`),
        h(
          'div',
          { class: 'row' },
          who?.role !== 'patient' && who?.role !== 'expert' && info.patientId
            ? h('a', { class: 'btn btn-small btn-quiet', href: `#/patients/${encodeURIComponent(info.patientId)}` }, 'Patient timeline')
            : null,
          who?.role === 'doctor' ? h('button', { type: 'button', class: 'btn btn-small btn-quiet', onclick: () => openShareDialog(study) }, 'Share…') : null,
          // OHIF (served by medshard at /ohif/) in this tab, so it finds this tab's session
          h('a', { class: 'btn btn-small btn-quiet', href: `/ohif/viewer?StudyInstanceUIDs=${encodeURIComponent(study)}`, 'data-testid': 'open-ohif' }, 'Open in OHIF'),
        ),
      ),
      h('aside', { class: 'viewer-series' }, h('h2', { class: 'visually-hidden' }, 'Series'), seriesList),
      h('section', { class: 'viewer-stage', 'aria-label': 'Image' }, toolbar, h('div', { class: 'stage-wrap' }, stage, overlay), slider, status),
      h('aside', { class: 'viewer-panels' }, findings, tags),
    ),
  );

  // ---------------------------------------------------------------- behaviour
  try {
    viewer = new StackViewer(element);
  } catch (err) {
    replace(status, message(`The viewer could not start: ${errorMessage(err)}`, 'error'));
    return cleanup;
  }
  const vp = viewer.viewport;
  const v = viewer;
  observer = new ResizeObserver(() => v.resize());
  observer.observe(element);

  const updateOverlay = () => {
    const index = vp.getCurrentImageIdIndex();
    const total = vp.getImageIds().length;
    const props = vp.getProperties();
    const voi = props.voiRange;
    stage.dataset.slice = String(index);
    stage.dataset.slices = String(total);
    stage.dataset.invert = String(!!props.invert);
    let wl = '';
    if (voi) {
      const ww = voi.upper - voi.lower;
      const wc = (voi.upper + voi.lower) / 2;
      stage.dataset.ww = ww.toFixed(1);
      stage.dataset.wc = wc.toFixed(1);
      wl = `W ${Math.round(ww)} L ${Math.round(wc)}`;
    }
    let zoomText = '';
    try {
      zoomText = `zoom ${(vp.getZoom() * 100).toFixed(0)}%`;
    } catch {
      /* before the first image */
    }
    overlay.textContent = `${index + 1} / ${total}  ${wl}  ${zoomText}`;
    slider.max = String(Math.max(1, total));
    slider.value = String(index + 1);
    const ds = instancesById.get(vp.getCurrentImageId()?.replace(/\/frames\/\d+$/, '') ?? '');
    if (ds) showTags(ds);
  };
  let shownTags: Dataset | null = null;
  const showTags = (ds: Dataset) => {
    if (ds === shownTags) return;
    shownTags = ds;
    replace(tagBody, tagRows(ds));
    filterTags();
  };
  const filterTags = () => {
    const q = tagFilter.value.trim().toLowerCase();
    for (const row of tagBody.children) {
      (row as HTMLElement).hidden = !!q && !(row.textContent ?? '').toLowerCase().includes(q);
    }
  };
  tagFilter.addEventListener('input', filterTags);

  element.addEventListener(Enums.Events.STACK_NEW_IMAGE, updateOverlay);
  element.addEventListener(Enums.Events.VOI_MODIFIED, updateOverlay);
  element.addEventListener(Enums.Events.CAMERA_MODIFIED, updateOverlay);
  // Load signals (for tests and `medshard bench web`), per series shown: data attributes on the
  // stage, in ms since navigation start, and performance marks: the first image drawn on the
  // canvas, then every slice of the stack loaded (data-slices-loaded/-failed/-total as they come)
  v.onProgress = (loaded, failed, total) => {
    stage.dataset.slicesLoaded = String(loaded);
    stage.dataset.slicesFailed = String(failed);
    stage.dataset.slicesTotal = String(total);
    if (total && loaded === total && stage.dataset.allSlicesMs === undefined) {
      stage.dataset.allSlicesMs = performance.mark('medshard:all-slices').startTime.toFixed(1);
    }
  };
  element.addEventListener(Enums.Events.IMAGE_RENDERED, () => {
    stage.dataset.renders = String(Number(stage.dataset.renders ?? 0) + 1);
    if (stage.dataset.firstImageMs === undefined && vp.getImageIds().length && vp.getImageData()) {
      stage.dataset.firstImageMs = performance.mark('medshard:first-image').startTime.toFixed(1);
    }
    if (stage.dataset.ready !== 'true' && vp.getImageIds().length) {
      stage.dataset.ready = 'true';
      updateOverlay();
    }
  });

  function choose(tool: PrimaryTool) {
    v.setPrimary(tool);
    for (const [t, b] of toolButtons) b.setAttribute('aria-pressed', String(t === tool));
  }
  function zoom(factor: number) {
    vp.setZoom(vp.getZoom() * factor);
    vp.render();
  }
  function invert() {
    vp.setProperties({ invert: !vp.getProperties().invert });
    vp.render();
    updateOverlay();
  }
  function reset() {
    vp.resetCamera();
    vp.resetProperties();
    vp.render();
    presets.value = '';
    updateOverlay();
  }
  function scroll(delta: number) {
    const total = vp.getImageIds().length;
    const next = Math.min(total - 1, Math.max(0, vp.getCurrentImageIdIndex() + delta));
    void vp.setImageIdIndex(next);
  }
  presets.addEventListener('change', () => {
    if (presets.value === 'default') {
      const invertState = vp.getProperties().invert;
      vp.resetProperties();
      vp.setProperties({ invert: invertState });
    } else if (presets.value) {
      const [ww, wc] = presets.value.split('/').map(Number);
      vp.setProperties({ voiRange: { lower: wc - ww / 2, upper: wc + ww / 2 } });
    }
    vp.render();
    updateOverlay();
  });
  slider.addEventListener('input', () => void vp.setImageIdIndex(Number(slider.value) - 1));
  stage.addEventListener('keydown', (e) => {
    const keys: Record<string, () => void> = {
      ArrowUp: () => scroll(-1),
      ArrowLeft: () => scroll(-1),
      PageUp: () => scroll(-10),
      ArrowDown: () => scroll(1),
      ArrowRight: () => scroll(1),
      PageDown: () => scroll(10),
      Home: () => scroll(-1e9),
      End: () => scroll(1e9),
      '+': () => zoom(1.25),
      '=': () => zoom(1.25),
      '-': () => zoom(1 / 1.25),
      i: invert,
      r: reset,
      w: () => choose('WindowLevel'),
      p: () => choose('Pan'),
      z: () => choose('Zoom'),
    };
    const action = keys[e.key];
    if (action && !e.ctrlKey && !e.metaKey && !e.altKey) {
      e.preventDefault();
      action();
    }
  });

  const showSeries = async (s: SeriesRow, sop?: string) => {
    currentSeries = s.uid;
    for (const li of seriesList.querySelectorAll('button')) li.setAttribute('aria-pressed', String(li.dataset.series === s.uid));
    stage.dataset.ready = 'false';
    stage.dataset.series = s.uid;
    delete stage.dataset.firstImageMs;
    delete stage.dataset.allSlicesMs;
    replace(status, message(`Loading series ${s.number}…`));
    try {
      const base = `${location.origin}${DICOMWEB}/studies/${study}/series/${s.uid}`;
      const meta = await dicomJson<Dataset[]>(`/studies/${study}/series/${s.uid}/metadata`);
      const images = meta.filter((ds) => num(ds, TAG.Rows) !== undefined);
      images.sort((a, b) => (num(a, TAG.InstanceNumber) ?? 0) - (num(b, TAG.InstanceNumber) ?? 0) || text(a, TAG.SOPInstanceUID).localeCompare(text(b, TAG.SOPInstanceUID)));
      instancesById = new Map(images.map((ds) => [`wadors:${base}/instances/${text(ds, TAG.SOPInstanceUID)}`, ds]));
      if (!images.length) {
        replace(status, message('This series holds no images.'));
        return;
      }
      const ids = await v.show(base, images);
      if (sop) {
        const at = ids.findIndex((id) => id.includes(`/instances/${sop}/`));
        if (at > 0) await vp.setImageIdIndex(at);
      }
      replace(status);
      updateOverlay();
    } catch (err) {
      replace(status, message(`Could not show the series: ${errorMessage(err)}`, 'error'));
    }
  };

  for (const s of series) {
    const img = h('img', { alt: '', width: 64, height: 64 });
    const b = h(
      'button',
      { type: 'button', class: 'series', 'data-series': s.uid, 'aria-pressed': 'false', 'data-testid': 'series', onclick: () => void showSeries(s) },
      img,
      h('span', {}, `#${s.number} ${s.modality}`, h('br'), h('span', { class: 'small muted' }, `${s.instances} image${s.instances === 1 ? '' : 's'}${s.description ? ` · ${s.description}` : ''}`)),
    );
    seriesList.append(h('li', {}, b));
    void thumbnailUrl(`/studies/${study}/series/${s.uid}`).then((url) => {
      if (url) {
        urls.push(url);
        img.src = url;
      }
    });
  }
  const jump = (seriesUid: string, sop: string) => {
    const s = series.find((x) => x.uid === seriesUid);
    if (!s) return;
    if (currentSeries === seriesUid) {
      const at = vp.getImageIds().findIndex((id) => id.includes(`/instances/${sop}/`));
      if (at >= 0) void vp.setImageIdIndex(at);
    } else void showSeries(s, sop);
    stage.focus();
  };
  json<{ findings: Finding[]; jobs: Job[] }>(`/api/studies/${study}/findings`)
    .then((r) => replace(findings, findingsPanel(r.findings, r.jobs, jump)))
    .catch((err: unknown) => {
      const text = err instanceof ApiError && err.status === 404 ? 'No AI analysis for this study.' : errorMessage(err);
      replace(findings, h('section', { class: 'card findings', 'data-testid': 'findings' }, h('h2', {}, 'AI findings'), message(text)));
    });

  if (series.length) {
    const first = [...series].sort((a, b) => b.instances - a.instances)[0];
    await showSeries(first);
  } else {
    replace(status, message('This study holds no image series.'));
  }
  return cleanup;
}
