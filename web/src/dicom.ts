// DICOM JSON (PS3.18 F.2) helpers and QIDO-RS searches against medshard's DICOMweb.
import { api, ApiError, errorText } from './api';

export const DICOMWEB = '/dicom-web';

export interface Element {
  vr: string;
  Value?: unknown[];
  InlineBinary?: string;
  BulkDataURI?: string;
}
export type Dataset = Record<string, Element>;

export const TAG = {
  SOPClassUID: '00080016',
  SOPInstanceUID: '00080018',
  StudyDate: '00080020',
  StudyTime: '00080030',
  AccessionNumber: '00080050',
  Modality: '00080060',
  ModalitiesInStudy: '00080061',
  StudyDescription: '00081030',
  SeriesDescription: '0008103E',
  PatientName: '00100010',
  PatientID: '00100020',
  PatientBirthDate: '00100030',
  PatientSex: '00100040',
  StudyInstanceUID: '0020000D',
  SeriesInstanceUID: '0020000E',
  SeriesNumber: '00200011',
  InstanceNumber: '00200013',
  ImagePositionPatient: '00200032',
  NumberOfStudyRelatedSeries: '00201206',
  NumberOfStudyRelatedInstances: '00201208',
  NumberOfSeriesRelatedInstances: '00201209',
  NumberOfFrames: '00280008',
  Rows: '00280010',
  Columns: '00280011',
  WindowCenter: '00281050',
  WindowWidth: '00281051',
} as const;

/** A person name as people write it: "Doe^Jane" becomes "Doe, Jane". */
export function personName(value: unknown): string {
  const alphabetic =
    typeof value === 'object' && value !== null ? (value as { Alphabetic?: string }).Alphabetic : value;
  if (typeof alphabetic !== 'string') return '';
  const [family = '', given = '', middle = '', prefix = '', suffix = ''] = alphabetic.split('^');
  const first = [prefix, given, middle].filter(Boolean).join(' ');
  const name = [family, first].filter(Boolean).join(', ');
  return suffix ? `${name} ${suffix}` : name;
}

/** Every value of an element as text (person names formatted, sequences summarised). */
export function texts(ds: Dataset | undefined, tag: string): string[] {
  const el = ds?.[tag];
  if (!el?.Value) return [];
  if (el.vr === 'PN') return el.Value.map(personName);
  if (el.vr === 'SQ') return [`(${el.Value.length} item${el.Value.length === 1 ? '' : 's'})`];
  return el.Value.map((v) => (v === null || v === undefined ? '' : String(v)));
}

export function text(ds: Dataset | undefined, tag: string): string {
  return texts(ds, tag).join('\\');
}

export function num(ds: Dataset | undefined, tag: string): number | undefined {
  const v = ds?.[tag]?.Value?.[0];
  const n = typeof v === 'number' ? v : typeof v === 'string' ? Number(v) : NaN;
  return Number.isFinite(n) ? n : undefined;
}

export interface StudyRow {
  uid: string;
  patientName: string;
  patientId: string;
  birthDate: string;
  sex: string;
  date: string;
  time: string;
  description: string;
  accession: string;
  modalities: string[];
  series: number;
  instances: number;
}

export function studyRow(ds: Dataset): StudyRow {
  return {
    uid: text(ds, TAG.StudyInstanceUID),
    patientName: text(ds, TAG.PatientName),
    patientId: text(ds, TAG.PatientID),
    birthDate: text(ds, TAG.PatientBirthDate),
    sex: text(ds, TAG.PatientSex),
    date: text(ds, TAG.StudyDate),
    time: text(ds, TAG.StudyTime),
    description: text(ds, TAG.StudyDescription),
    accession: text(ds, TAG.AccessionNumber),
    modalities: texts(ds, TAG.ModalitiesInStudy),
    series: num(ds, TAG.NumberOfStudyRelatedSeries) ?? 0,
    instances: num(ds, TAG.NumberOfStudyRelatedInstances) ?? 0,
  };
}

/** Newest first; studies without a date last. */
export function byDateDesc(a: StudyRow, b: StudyRow): number {
  return (b.date + b.time).localeCompare(a.date + a.time);
}

export async function dicomJson<T>(path: string): Promise<T> {
  const r = await api(DICOMWEB + path, { headers: { Accept: 'application/dicom+json' } });
  if (!r.ok) throw new ApiError(r.status, await errorText(r));
  return (await r.json()) as T;
}

/** QIDO-RS search for studies the server lets the caller see. */
export async function searchStudies(filters: Record<string, string>): Promise<StudyRow[]> {
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(filters)) if (v) query.set(k, v);
  query.append('includefield', 'StudyDescription');
  query.set('limit', '500');
  const found = await dicomJson<Dataset[]>(`/studies?${query}`);
  return found.map(studyRow).sort(byDateDesc);
}

export interface SeriesRow {
  uid: string;
  modality: string;
  number: number;
  description: string;
  instances: number;
}

export async function studySeries(study: string): Promise<SeriesRow[]> {
  const found = await dicomJson<Dataset[]>(`/studies/${encodeURIComponent(study)}/series`);
  return found
    .map((ds) => ({
      uid: text(ds, TAG.SeriesInstanceUID),
      modality: text(ds, TAG.Modality),
      number: num(ds, TAG.SeriesNumber) ?? 0,
      description: text(ds, TAG.SeriesDescription),
      instances: num(ds, TAG.NumberOfSeriesRelatedInstances) ?? 0,
    }))
    .sort((a, b) => a.number - b.number);
}

/** A rendered thumbnail as an object URL (an <img> cannot send the bearer token itself). */
export async function thumbnailUrl(path: string): Promise<string | null> {
  const r = await api(`${DICOMWEB}${path}/thumbnail?viewport=128,128`, {
    headers: { Accept: 'image/jpeg, image/png' },
  });
  if (!r.ok) return null;
  return URL.createObjectURL(await r.blob());
}
