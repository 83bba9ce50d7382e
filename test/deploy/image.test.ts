/**
 * What the container image holds and how its CLI behaves, without a Docker engine: the runtime
 * stage's files are laid out from the Dockerfile's own COPY lines (node_modules without the
 * packages the build stage drops), and the real CLI runs from there. Also the SBOM, the image's
 * (the build stage's steps replayed on a copy of the lockfile) and `npm run sbom`'s.
 */
import { execFile } from 'node:child_process';
import { access, cp, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mintX509Svid } from '../../src/devca/certificates.js';
import { createTestDatabase } from '../helpers/db.js';
import { pemOf, trustDomainPki } from '../helpers/pki.js';
import { runProcess, type ProcessResult } from '../helpers/process.js';
import type { DockerStage } from './dockerfile.js';
import { copiesFrom, deletedDependencies, loadDockerfile } from './dockerfile.js';
import { ROOT } from './render.js';

const NO_PGLITE = 'this image has no embedded PostgreSQL (PGlite); set --database-url or TASK_BROKER_DATABASE_URL';
const LIMIT_MS = 120_000;
const run = promisify(execFile);

let build: DockerStage;
let runtime: DockerStage;
let scratch: string;
let app: string;

beforeAll(async () => {
  const { stages } = await loadDockerfile();
  build = stages[0] as DockerStage;
  runtime = stages.at(-1) as DockerStage;
  scratch = await mkdtemp(join(tmpdir(), 'task-broker-image-'));
  app = join(scratch, 'app');
  await layOutImage(app);
});

afterAll(async () => {
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

/** The runtime stage's /app: each COPY --from=build, with node_modules linked package by package. */
async function layOutImage(target: string): Promise<void> {
  await access(join(ROOT, 'dist/src/cli/main.js')).catch(() => {
    throw new Error('dist/ is not built: run `npm run build` before the deploy tests');
  });
  const dropped = deletedDependencies(build);
  for (const { source, destination } of copiesFrom(runtime, build)) {
    const to = join(target, destination);
    if (source === 'sbom.cdx.json') continue; // written by the build; checked below
    if (source.replace(/\/$/, '') === 'node_modules') await linkPackages(join(ROOT, 'node_modules'), to, dropped);
    else await cp(join(ROOT, source), to, { recursive: true });
  }
}

async function linkPackages(from: string, to: string, leaveOut: readonly string[], scope = ''): Promise<void> {
  await mkdir(to, { recursive: true });
  for (const entry of await readdir(from, { withFileTypes: true })) {
    if (entry.name.startsWith('.')) continue;
    const name = scope ? `${scope}/${entry.name}` : entry.name;
    if (!scope && entry.name.startsWith('@')) await linkPackages(join(from, entry.name), join(to, entry.name), leaveOut, entry.name);
    else if (!leaveOut.includes(name)) await symlink(join(from, entry.name), join(to, entry.name));
  }
}

/** The image's CLI (its ENTRYPOINT's script) with only `env`, none of this process's TASK_BROKER_* settings. */
function imageCli(command: string[], env: Record<string, string>, cwd: string): Promise<ProcessResult> {
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('TASK_BROKER_')));
  return runProcess([process.execPath, join(app, 'bin/task-broker.js'), ...command], {
    cwd,
    env: { ...inherited, ...env },
    limitMs: LIMIT_MS,
    hung: ({ stdout, stderr }) => new Error(`task-broker ${command.join(' ')} did not exit\nstdout: ${stdout}\nstderr: ${stderr}`),
  });
}

describe('the runtime image, without the embedded PostgreSQL', () => {
  it('has no PGlite packages, and its migrate without a database URL stops with one line naming the settings', async () => {
    for (const name of deletedDependencies(build)) {
      await expect(access(join(app, 'node_modules', name)), name).rejects.toThrow();
    }
    const result = await imageCli(['migrate'], {}, scratch);
    expect(result.stderr).toBe(`task-broker migrate: ${NO_PGLITE}\n`);
    expect(result.code).toBe(1);
  });

  it('stops serve without a database URL the same way, before creating a data directory', async () => {
    const dir = join(scratch, 'serve');
    await mkdir(dir);
    const pki = await trustDomainPki('example.org');
    const svid = await pemOf(await mintX509Svid(pki.root, 'spiffe://example.org/ns/task-broker/sa/task-broker'));
    await writeFile(join(dir, 'svid.pem'), svid.certChainPem);
    await writeFile(join(dir, 'svid.key'), svid.keyPem, { mode: 0o600 });
    await writeFile(join(dir, 'bundle.pem'), pki.root.pem);
    const result = await imageCli(
      ['serve'],
      {
        TASK_BROKER_KEK: Buffer.alloc(32, 7).toString('base64'),
        TASK_BROKER_SVID_CERT: join(dir, 'svid.pem'),
        TASK_BROKER_SVID_KEY: join(dir, 'svid.key'),
        TASK_BROKER_BUNDLES: `example.org=${join(dir, 'bundle.pem')}`,
      },
      dir,
    );
    expect(result.stderr).toBe(`task-broker serve: ${NO_PGLITE}\n`);
    expect(result.code).toBe(1);
    expect(await readdir(dir), 'no task-broker-data directory').toEqual(['bundle.pem', 'svid.key', 'svid.pem']);
  });

  it('migrates PostgreSQL with a database URL: migrate needs nothing from PGlite', async () => {
    const database = await createTestDatabase('postgres');
    try {
      const result = await imageCli(['migrate'], { TASK_BROKER_DATABASE_URL: database.url ?? '' }, scratch);
      expect(result.stderr).toBe('');
      expect(result.code).toBe(0);
      expect(result.stdout).toMatch(/^applied {2}0001_/m);
    } finally {
      await database.drop();
    }
  });
});

interface CycloneDx {
  bomFormat: string;
  specVersion: string;
  metadata: { component: { name: string; 'bom-ref': string } };
  components: { name: string; version: string; 'bom-ref': string; purl?: string }[];
  dependencies: { ref: string; dependsOn?: string[] }[];
}

/** Runs `projectDir`'s scripts/sbom.mjs (the project's package files are beside it) into the scratch folder. */
async function sbomOf(projectDir: string, name: string): Promise<CycloneDx> {
  const out = join(scratch, `${name}.cdx.json`);
  const { stdout } = await run(process.execPath, [join(projectDir, 'scripts/sbom.mjs'), out], { cwd: scratch });
  expect(stdout).toContain(out);
  return JSON.parse(await readFile(out, 'utf8')) as CycloneDx;
}

interface LockEntry {
  name?: string;
  version?: string;
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  peerDependenciesMeta?: Record<string, { optional?: boolean }>;
}

/**
 * name@version of every package a production install needs, found independently of npm's flags:
 * from package.json's dependencies along each package's dependency edges, resolved through the
 * lockfile's node_modules paths the way Node resolves them (nearest node_modules up the tree).
 */
async function runtimeClosure(projectDir: string): Promise<string[]> {
  const pkg = JSON.parse(await readFile(join(projectDir, 'package.json'), 'utf8')) as LockEntry;
  const { packages } = JSON.parse(await readFile(join(projectDir, 'package-lock.json'), 'utf8')) as { packages: Record<string, LockEntry> };
  const resolveFrom = (from: string, name: string): string | undefined => {
    for (let base = from; ;) {
      const path = `${base ? `${base}/` : ''}node_modules/${name}`;
      if (packages[path]) return path;
      if (!base) return undefined;
      const up = base.lastIndexOf('/node_modules/');
      base = up < 0 ? '' : base.slice(0, up);
    }
  };
  const edges = (entry: LockEntry) => [
    ...Object.keys({ ...entry.dependencies, ...entry.optionalDependencies }),
    ...Object.keys(entry.peerDependencies ?? {}).filter((d) => !entry.peerDependenciesMeta?.[d]?.optional),
  ];
  const seen = new Set<string>();
  const queue: [string, string][] = edges(pkg).map((name) => ['', name]);
  for (let next = queue.pop(); next; next = queue.pop()) {
    const path = resolveFrom(...next);
    if (path === undefined || seen.has(path)) continue;
    seen.add(path);
    for (const name of edges(packages[path] ?? {})) queue.push([path, name]);
  }
  // One name@version may sit at several paths (nested copies): an SBOM lists it once.
  return [
    ...new Set([...seen].map((path) => `${packages[path]?.name ?? path.slice(path.lastIndexOf('node_modules/') + 13)}@${packages[path]?.version}`)),
  ].sort();
}

function componentsOf(bom: CycloneDx): string[] {
  return [...new Set(bom.components.map((c) => `${c.name}@${c.version}`))].sort();
}

describe('the SBOM', () => {
  const devOnly = ['vitest', 'typescript', 'eslint', 'prettier', 'tsx', '@bufbuild/buf', 'ajv'];

  it('npm run sbom writes a CycloneDX document of exactly the runtime dependencies', async () => {
    const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string>; dependencies: Record<string, string> };
    expect(pkg.scripts.sbom).toBe('node scripts/sbom.mjs');
    const bom = await sbomOf(ROOT, 'project');
    expect(bom.bomFormat).toBe('CycloneDX');
    expect(bom.metadata.component.name).toBe('task-broker');
    // Every runtime package (npm sbom --omit=dev alone misses some: npm/cli#7909), and nothing else.
    expect(componentsOf(bom)).toEqual(await runtimeClosure(ROOT));
    const names = bom.components.map((c) => c.name);
    for (const direct of [...Object.keys(pkg.dependencies), '@grpc/grpc-js']) expect(names, direct).toContain(direct);
    for (const dev of devOnly) expect(names, dev).not.toContain(dev);
    for (const c of bom.components) expect(c.purl, c.name).toMatch(/^pkg:npm\/.+@\d/);
    // The dependency graph only refers to listed components.
    const refs = new Set([bom.metadata.component['bom-ref'], ...bom.components.map((c) => c['bom-ref'])]);
    expect(bom.dependencies.flatMap((d) => [d.ref, ...(d.dependsOn ?? [])]).filter((r) => !refs.has(r))).toEqual([]);
  });

  it("the image's, from the build stage's steps on the lockfile, lists its runtime packages without PGlite", async () => {
    const dir = join(scratch, 'sbom');
    await mkdir(join(dir, 'scripts'), { recursive: true });
    for (const file of ['package.json', 'package-lock.json', 'scripts/sbom.mjs']) await cp(join(ROOT, file), join(dir, file));
    const dropped = deletedDependencies(build);
    await run('npm', ['pkg', 'delete', ...dropped.map((name) => `dependencies.${name}`)], { cwd: dir });
    await run('npm', ['prune', '--omit=dev', '--ignore-scripts', '--package-lock-only', '--offline', '--no-audit', '--no-fund'], { cwd: dir });
    const bom = await sbomOf(dir, 'image');
    expect(componentsOf(bom)).toEqual(await runtimeClosure(dir));
    const names = bom.components.map((c) => c.name);
    expect(names).toContain('@grpc/grpc-js');
    expect(names).toContain('pg');
    for (const name of [...dropped, ...devOnly]) expect(names, name).not.toContain(name);
  });
});
