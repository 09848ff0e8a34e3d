// STOW-RS (PS3.18 10.5) of one file at a time from the browser, with upload progress, and the
// reading of the Store Instances Response into an outcome a person understands.
import { accessToken, refresh } from './api';
import { DICOMWEB, type Dataset } from './dicom';

export type Outcome = 'stored' | 'duplicate' | 'rejected';

export interface StowResult {
  outcome: Outcome;
  reason: string;
  study?: string;
}

/** PS3.18 Table I.2-2 failure reasons, and PS3.7's duplicate SOP instance. */
const FAILURES: Record<number, string> = {
  0xa700: 'the archive is out of resources',
  0xa900: 'the data set does not match the study',
  0xc000: 'not a valid DICOM file',
  0x0111: 'an instance with this UID is already stored with different content',
  0x0110: 'processing failure',
};

/** The texts of a `Warning: 299 agent "text", ...` header (RFC 7234 5.5). */
export function warnings(header: string | null): string[] {
  if (!header) return [];
  return [...header.matchAll(/\d{3} \S+ "([^"]*)"/g)].map((m) => m[1]);
}

function studyOf(url: unknown): string | undefined {
  return typeof url === 'string' ? /\/studies\/([0-9.]+)/.exec(url)?.[1] : undefined;
}

/** The outcome of a one-instance STOW-RS request, from its status, body and Warning header. */
export function outcomeOf(status: number, body: unknown, warningHeader: string | null): StowResult {
  const texts = warnings(warningHeader);
  const ds = (typeof body === 'object' && body !== null ? body : {}) as Dataset & Record<string, unknown>;
  if (status === 200) {
    const refs = (ds['00081199']?.Value ?? []) as Dataset[];
    const study = studyOf(ds['00081190']?.Value?.[0]) ?? studyOf(refs[0]?.['00081190']?.Value?.[0]);
    const dup = texts.some((t) => t.includes('already stored'));
    return { outcome: dup ? 'duplicate' : 'stored', reason: dup ? 'already in the archive (identical)' : '', study };
  }
  const failed = (ds['00081198']?.Value ?? []) as Dataset[];
  const code = failed[0]?.['00081197']?.Value?.[0];
  const text = texts[0]?.replace(/^part \d+:\s*/, '');
  if (failed.length || texts.length) {
    const known = typeof code === 'number' ? FAILURES[code] : undefined;
    return { outcome: 'rejected', reason: text || known || `failure 0x${Number(code ?? 0).toString(16)}` };
  }
  const error = ds.error ?? ds.detail;
  return { outcome: 'rejected', reason: typeof error === 'string' ? error : `HTTP ${status}` };
}

function post(file: Blob, onProgress: (loaded: number) => void): Promise<XMLHttpRequest> {
  const boundary = `medshard-${crypto.randomUUID()}`;
  const body = new Blob([
    `--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`,
    file,
    `\r\n--${boundary}--\r\n`,
  ]);
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', `${DICOMWEB}/studies`);
    xhr.setRequestHeader('Content-Type', `multipart/related; type="application/dicom"; boundary=${boundary}`);
    xhr.setRequestHeader('Accept', 'application/dicom+json');
    xhr.setRequestHeader('Authorization', `Bearer ${accessToken() ?? ''}`);
    xhr.responseType = 'text';
    xhr.upload.onprogress = (e) => onProgress(Math.min(e.loaded, file.size));
    xhr.onload = () => resolve(xhr);
    xhr.onerror = () => reject(new Error('network error: the upload did not reach the archive'));
    xhr.send(body);
  });
}

/** Store one file; progress reports bytes of the file sent so far. */
export async function storeFile(file: Blob, onProgress: (loaded: number) => void): Promise<StowResult> {
  let xhr = await post(file, onProgress);
  if (xhr.status === 401 && (await refresh())) xhr = await post(file, onProgress);
  if (xhr.status === 401) return { outcome: 'rejected', reason: 'your session has expired' };
  let body: unknown = null;
  try {
    body = xhr.responseText ? JSON.parse(xhr.responseText) : null;
  } catch {
    body = null;
  }
  onProgress(file.size);
  return outcomeOf(xhr.status, body, xhr.getResponseHeader('Warning'));
}
