// Vite build of medshard's browser UI. The bundle goes into the Python package
// (src/medshard/web_dist/, git-ignored) and is served by `medshard serve` at `/`.
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { defineConfig, type Plugin } from 'vite';

// the bundle goes into the Python package, so `medshard serve` needs no Node.js at run time
const OUT_DIR = fileURLToPath(new URL('../src/medshard/web_dist', import.meta.url));

/**
 * Cornerstone's DICOM image loader finds its WebAssembly codecs with
 * `new URL('@cornerstonejs/codec-x/decodewasm', import.meta.url)`: a bare package specifier,
 * which Vite leaves unresolved (the browser would then ask for a path that does not exist).
 * Rewrite each one into a `?url` import, so Vite emits the .wasm file as a hashed asset
 * (served with a long cache by medshard) and the loader gets its real URL.
 */
function cornerstoneWasm(): Plugin {
  const pattern = /new URL\(\s*'(@cornerstonejs\/codec-[^']+)'\s*,\s*import\.meta\.url\s*\)/g;
  return {
    name: 'medshard-cornerstone-wasm',
    enforce: 'pre',
    transform(code, id) {
      if (!id.includes('@cornerstonejs/dicom-image-loader') || !code.includes('@cornerstonejs/codec-')) {
        return null;
      }
      const imports: string[] = [];
      const rewritten = code.replace(pattern, (_match, spec: string) => {
        const name = `__medshardWasm${imports.length}`;
        imports.push(`import ${name} from '${spec}?url';`);
        return `new URL(${name}, self.location.href)`;
      });
      if (!imports.length) return null;
      return { code: `${imports.join('\n')}\n${rewritten}`, map: null };
    },
  };
}

/**
 * Write a gzip twin (`name.gz`) of every compressible asset once, at build time; medshard
 * serves it to clients that accept gzip (the viewer's 4 MB of JavaScript become ~1.2 MB on a
 * phone's connection) without compressing anything per request.
 */
function precompress(): Plugin {
  return {
    name: 'medshard-precompress',
    apply: 'build',
    closeBundle() {
      const assets = join(OUT_DIR, 'assets');
      for (const name of readdirSync(assets)) {
        if (!/\.(js|css|wasm|svg|json)$/.test(name)) continue;
        const raw = readFileSync(join(assets, name));
        const packed = gzipSync(raw, { level: 9 });
        if (packed.length < raw.length * 0.9) writeFileSync(join(assets, `${name}.gz`), packed);
      }
    },
  };
}

export default defineConfig({
  base: '/',
  plugins: [cornerstoneWasm(), precompress()],
  worker: {
    format: 'es',
    plugins: () => [cornerstoneWasm()],
  },
  optimizeDeps: {
    // dev server only: the loader's worker and wasm must not be pre-bundled
    exclude: ['@cornerstonejs/dicom-image-loader'],
    include: ['dicom-parser'],
  },
  build: {
    outDir: OUT_DIR,
    emptyOutDir: true,
    target: 'es2022',
    assetsInlineLimit: 0,
    chunkSizeWarningLimit: 4096,
    sourcemap: false,
  },
  server: {
    // `npm run dev` against a running `medshard serve` on :8080
    proxy: {
      '/api': 'http://127.0.0.1:8080',
      '/dicom-web': 'http://127.0.0.1:8080',
      '/ohif': 'http://127.0.0.1:8080', // OHIF, as built into the service's bundle
    },
  },
});
