#!/usr/bin/env node
/**
 * A CycloneDX SBOM of the runtime dependencies: the packages `npm ci --omit=dev` installs, from
 * package-lock.json (so it does not depend on what node_modules holds now).
 *
 *   npm run sbom                      writes dist/sbom.cdx.json
 *   node scripts/sbom.mjs FILE        writes FILE
 *
 * `npm sbom --omit=dev` would be the direct way, but it also drops every runtime package that a
 * dev dependency reaches too (npm/cli#7909: here jose, pino, yaml, pg's internals and more). So
 * this asks npm for the whole tree and keeps the components the lockfile does not mark `dev`,
 * the flag `npm ci --omit=dev` itself goes by.
 *
 * The container build runs it after pruning (Dockerfile), so the image's /app/sbom.cdx.json
 * lists exactly the packages in the image.
 */
import { execFile } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const out = resolve(process.argv[2] ?? resolve(ROOT, 'dist/sbom.cdx.json'));

// Under `npm run`, use the npm that runs us; otherwise the one on PATH.
const npmCli = process.env.npm_execpath;
const [command, prefix] = npmCli?.endsWith('.js') ? [process.execPath, [npmCli]] : ['npm', []];
const args = [...prefix, 'sbom', '--package-lock-only', '--sbom-format=cyclonedx', '--sbom-type=application'];

function fail(message) {
  console.error(`sbom: ${message}`);
  process.exit(1);
}

let stdout;
try {
  ({ stdout } = await promisify(execFile)(command, args, { cwd: ROOT, maxBuffer: 64 * 1024 * 1024 }));
} catch (err) {
  fail(`npm sbom failed (npm 9.5 or later is needed): ${err.stderr?.trim() || err.message}`);
}
const bom = JSON.parse(stdout);
if (bom.bomFormat !== 'CycloneDX' || !Array.isArray(bom.components) || !bom.metadata?.component) {
  fail('npm sbom did not produce a CycloneDX document');
}

/** name@version of every package the lockfile installs without dev dependencies. */
const pkg = JSON.parse(await readFile(resolve(ROOT, 'package.json'), 'utf8'));
const lock = JSON.parse(await readFile(resolve(ROOT, 'package-lock.json'), 'utf8'));
const runtime = new Set();
for (const [path, entry] of Object.entries(lock.packages ?? {})) {
  if (path === '' || entry.dev || entry.link) continue;
  const name = entry.name ?? path.slice(path.lastIndexOf('node_modules/') + 'node_modules/'.length);
  runtime.add(`${name}@${entry.version}`);
}
if (runtime.size === 0) fail('package-lock.json lists no runtime packages (lockfileVersion 2 or later is needed)');

bom.components = bom.components.filter((c) => runtime.has(`${c.name}@${c.version}`));
const kept = new Set([bom.metadata.component['bom-ref'], ...bom.components.map((c) => c['bom-ref'])]);
bom.dependencies = (bom.dependencies ?? []).filter((d) => kept.has(d.ref)).map((d) => ({ ...d, dependsOn: (d.dependsOn ?? []).filter((r) => kept.has(r)) }));
// npm names the root component after the folder (the image builds in /src); purl and bom-ref
// already carry the package name.
bom.metadata.component.name = pkg.name;

await mkdir(dirname(out), { recursive: true });
await writeFile(out, `${JSON.stringify(bom, null, 2)}\n`);
console.log(`sbom: wrote ${out} (CycloneDX ${bom.specVersion}, ${bom.components.length} runtime components)`);
