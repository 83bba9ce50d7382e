/**
 * `task-broker/client`, `task-broker/verifier` and `task-broker/mcp` are light: importing each by its package name (self-reference through the
 * package.json `exports`, on the built dist/) loads no database driver and no metrics. A resolve
 * hook in the child process records every specifier it resolves.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { cleanupsAfterEach } from '../helpers/cleanup.js';
import { runProcess } from '../helpers/process.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const FORBIDDEN = ['@electric-sql/pglite', 'kysely-pglite-dialect', 'pg', 'kysely', 'prom-client'];

const cleanups = cleanupsAfterEach();

/** The hook: appends "specifier <tab> resolved URL" for each resolution to the file named by RESOLVE_LOG. */
const HOOKS = `
import { appendFileSync } from 'node:fs';
export async function resolve(specifier, context, next) {
  const result = await next(specifier, context);
  appendFileSync(process.env.RESOLVE_LOG, specifier + '\\t' + result.url + '\\n');
  return result;
}
`;

const REGISTER = `import { register } from 'node:module';\nregister('./hooks.mjs', import.meta.url);\n`;

/** The package a resolved URL belongs to, by its last node_modules segment. */
function packageOf(url: string): string | undefined {
  const match = /\/node_modules\/((?:@[^/]+\/)?[^/]+)\/(?!.*\/node_modules\/)/.exec(url);
  return match?.[1];
}

const ENTRIES = [
  {
    entry: 'client',
    file: 'dist/src/client/index.js',
    exports: ['TaskBrokerClient', 'connectTaskBroker', 'BrokerClient', 'AdminClient', 'NotFoundError'],
    loads: '@grpc/grpc-js',
  },
  {
    entry: 'verifier',
    file: 'dist/src/verifier/index.js',
    exports: ['createTaskTokenVerifier', 'expressMiddleware', 'fastifyHook', 'verifyHttpRequest'],
    loads: '@peculiar/x509',
  },
  {
    entry: 'mcp',
    file: 'dist/src/mcp/index.js',
    exports: ['guardMcpTasks', 'McpTaskGuard', 'requesterAuthInfo', 'argumentsSha256'],
    loads: '@modelcontextprotocol/sdk',
  },
];

describe.each(ENTRIES)('importing task-broker/$entry', ({ entry, file, exports, loads }) => {
  it('loads none of the database or metrics packages', async () => {
    const dir = await cleanups.tempDir('tb-import-graph-');
    const log = join(dir, 'resolved.tsv');
    await writeFile(join(dir, 'hooks.mjs'), HOOKS);
    await writeFile(join(dir, 'register.mjs'), REGISTER);
    await writeFile(log, '');
    const script = `const m = await import('task-broker/${entry}'); console.log(JSON.stringify(Object.keys(m).sort()));`;
    const result = await runProcess([process.execPath, '--import', join(dir, 'register.mjs'), '--input-type=module', '-e', script], {
      env: { RESOLVE_LOG: log },
      cwd: ROOT,
      limitMs: 60_000,
      hung: () => new Error(`node importing task-broker/${entry} did not exit within 60 s`),
    });
    expect(result.code, result.stderr).toBe(0);
    expect(JSON.parse(result.stdout)).toEqual(expect.arrayContaining(exports));

    const resolved = (await readFile(log, 'utf8'))
      .split('\n')
      .filter(Boolean)
      .map((line) => line.split('\t') as [string, string]);
    // The hook saw the import by name, resolved through `exports` to the built entry, and the SDK's own packages.
    expect(resolved).toContainEqual([`task-broker/${entry}`, `file://${join(ROOT, file)}`]);
    const packages = new Set(resolved.map(([, url]) => packageOf(url)).filter((p): p is string => p !== undefined));
    expect(packages).toContain(loads);
    for (const name of FORBIDDEN) {
      expect(resolved.filter(([specifier]) => specifier === name || specifier.startsWith(`${name}/`))).toEqual([]);
      expect(packages.has(name), `${name} was loaded`).toBe(false);
    }
  });
});
