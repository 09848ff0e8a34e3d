// Puts the OHIF Viewer into medshard's bundle, served at /ohif/ (`npm run build` runs this
// after Vite, which has just emptied the bundle folder).
//
// @ohif/app's npm tarball ships OHIF prebuilt (dist/: index.html, webpack bundles, codecs),
// with every one of its npm dependencies compiled in. It is therefore not an npm dependency
// of the UI (installing it as one would pull ~40 packages, some absent from the registry, that
// nothing here uses): `npm pack` fetches the one tarball pinned in package.json ("ohif":
// version and sha512 integrity, checked here; npm's cache serves repeat builds), and this
// script copies its dist/ into src/medshard/web_dist/ohif/ with four changes:
// - OHIF is built to live at the site's root ("/"); medshard serves it under /ohif/, so the
//   webpack runtimes' public path, index.html's links and app.bundle.css's font URLs move there;
// - index.html loses its inline scripts (medshard's page CSP allows no inline script) and the
//   service worker; ohif/app-config.js (medshard's data source and token, in this folder)
//   replaces OHIF's demo config and sets what the inline scripts set;
// - what a DICOMweb viewer does not need stays out: the ONNX runtime for AI segmentation (136
//   MB), the slide-microscopy viewer, the service worker, OIDC and Google Cloud helpers, the
//   PWA manifest and OHIF's sample customizations;
// - compressible files get a gzip twin (name.gz), which medshard sends to clients accepting
//   gzip (the 17 MB app bundle becomes ~4 MB).
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  copyFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

const HERE = fileURLToPath(new URL('.', import.meta.url));
const WEB = join(HERE, '..');
const OUT = join(WEB, '..', 'src', 'medshard', 'web_dist', 'ohif');
/** The path medshard serves OHIF under (medshard.api.web.OHIF_PREFIX + "/"). */
const BASE = '/ohif/';
/** Top-level entries of dist/ left out (see above). */
const LEFT_OUT = new Set([
  'ort',
  'dicom-microscopy-viewer',
  'app-config.js',
  'sw.js',
  'init-service-worker.js',
  'google.js',
  'oidc-client.min.js',
  'silent-refresh.html',
  'manifest.json',
  'customizations',
  '_headers',
  '_redirects',
  'serve.json',
]);
const COMPRESSIBLE = /\.(js|css|wasm|json|svg|html)$/;

function fail(message) {
  console.error(`ohif/bundle.mjs: ${message}`);
  process.exit(1);
}

/** The pinned tarball, fetched (or taken from npm's cache) by `npm pack`, integrity-checked. */
function tarball(pin, work) {
  const spec = `${pin.package}@${pin.version}`;
  const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
  const out = execFileSync(
    npm,
    ['pack', spec, '--pack-destination', work, '--prefer-offline', '--json', '--silent'],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const [info] = JSON.parse(out);
  const file = join(work, info.filename);
  const [algorithm, expected] = pin.integrity.split(/-(.*)/s);
  const actual = createHash(algorithm).update(readFileSync(file)).digest('base64');
  if (actual !== expected) {
    fail(`${spec}: integrity ${algorithm}-${actual} is not the pinned ${pin.integrity}`);
  }
  return file;
}

/** Move root-relative URLs ("/x", not "//host") under BASE. */
function rebase(text, pattern) {
  return text.replace(pattern, (_m, before, path) => `${before}${BASE}${path}`);
}

function patchIndex(html) {
  let page = html
    // inline scripts (window.PUBLIC_URL, browserImportFunction): app-config.js sets both
    .replace(/<script>[^<]*<\/script>/g, '')
    .replace(/<script[^>]*init-service-worker\.js[^>]*><\/script>/g, '')
    .replace(/<link rel="manifest"[^>]*>/g, '');
  page = rebase(page, /((?:href|src|content)=")\/(?!\/)([^"]*)/g);
  if (/<script>/.test(page) || !page.includes(`src="${BASE}app-config.js"`)) {
    fail('index.html is not laid out as expected (an inline script, or no app-config.js)');
  }
  return page.replace('<title>OHIF Viewer</title>', '<title>OHIF Viewer · medshard</title>');
}

function patchScript(name, code) {
  // webpack's runtime: chunks, workers and images are loaded from the public path
  const runtime = /__webpack_require__\.p = "\/";/g;
  const hits = code.match(runtime)?.length ?? 0;
  if (name.startsWith('app.bundle.') && hits !== 1) {
    fail(`${name}: expected one webpack public path, found ${hits}`);
  }
  return hits ? code.replace(runtime, `__webpack_require__.p = "${BASE}";`) : code;
}

function main() {
  const pkg = JSON.parse(readFileSync(join(WEB, 'package.json'), 'utf8'));
  const pin = pkg.ohif;
  if (!pin?.package || !pin.version || !pin.integrity) fail('package.json has no "ohif" pin');
  const started = Date.now();
  const work = mkdtempSync(join(tmpdir(), 'medshard-ohif-'));
  try {
    const file = tarball(pin, work);
    execFileSync('tar', ['-xzf', file, '-C', work, 'package/dist'], { stdio: 'inherit' });
    const dist = join(work, 'package', 'dist');
    rmSync(OUT, { recursive: true, force: true });
    mkdirSync(OUT, { recursive: true });
    for (const entry of readdirSync(dist)) {
      if (LEFT_OUT.has(entry)) continue;
      const from = join(dist, entry);
      const to = join(OUT, entry);
      if (entry === 'index.html') {
        writeFileSync(to, patchIndex(readFileSync(from, 'utf8')));
      } else if (entry.endsWith('.js')) {
        writeFileSync(to, patchScript(entry, readFileSync(from, 'utf8')));
      } else if (entry.endsWith('.css')) {
        writeFileSync(to, rebase(readFileSync(from, 'utf8'), /(url\(\s*["']?)\/(?!\/)([^)"']*)/g));
      } else if (statSync(from).isDirectory()) {
        cpSync(from, to, { recursive: true });
      } else {
        copyFileSync(from, to);
      }
    }
    copyFileSync(join(HERE, 'app-config.js'), join(OUT, 'app-config.js'));
    writeFileSync(join(OUT, 'VERSION'), `${pin.package}@${pin.version}\n`);
    let bytes = 0;
    let packed = 0;
    for (const entry of readdirSync(OUT, { recursive: true })) {
      const path = join(OUT, entry);
      if (!statSync(path).isFile()) continue;
      const raw = readFileSync(path);
      bytes += raw.length;
      if (!COMPRESSIBLE.test(entry) || raw.length < 1024) continue;
      const gz = gzipSync(raw, { level: 6 });
      if (gz.length < raw.length * 0.9) {
        writeFileSync(`${path}.gz`, gz);
        packed += gz.length;
      }
    }
    const mb = (n) => `${(n / 1048576).toFixed(1)} MB`;
    console.log(
      `ohif: ${pin.package}@${pin.version} -> ${OUT} (${mb(bytes)}, gzip twins ${mb(packed)}, ` +
        `${((Date.now() - started) / 1000).toFixed(1)} s)`,
    );
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  if (!existsSync(join(OUT, 'index.html'))) fail('no index.html was written');
}

main();
