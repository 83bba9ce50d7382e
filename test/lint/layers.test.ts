/**
 * The layer rules of layers.config.js, run by ESLint on test/fixtures/layers/: a tree posing as
 * src/ in which each file keeps to the layers or breaks them in one named way. The tree-wide
 * `eslint .` applies the layer rules to the real src/ only, so the fixtures do not fail it.
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ESLint, type Linter } from 'eslint';
import tseslint from 'typescript-eslint';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const fixtures = fileURLToPath(new URL('../fixtures/layers/', import.meta.url));
// layers.config.js is the JavaScript module eslint.config.js imports; it has no type declarations.
const { layerRules } = (await import(new URL('../../layers.config.js', import.meta.url).href)) as { layerRules: (root: string) => Linter.Config[] };

/** ESLint with the layer rules alone (no type information needed), rooted at `root`. */
function layerLinter(root: string): ESLint {
  return new ESLint({
    cwd: root,
    overrideConfigFile: true,
    overrideConfig: [{ files: ['**/*.ts'], languageOptions: { parser: tseslint.parser } }, ...layerRules(root)],
  });
}

describe('layer rules', () => {
  /** Per fixture file under src/, the problems reported, as `rule: message`. */
  const problems = new Map<string, string[]>();

  beforeAll(async () => {
    for (const result of await layerLinter(fixtures).lintFiles(['src/**/*.ts'])) {
      problems.set(
        relative(fixtures, result.filePath),
        result.messages.map((m) => `${m.ruleId ?? 'fatal'}: ${m.message}`),
      );
    }
  });

  it('lets a file import a lower layer', () => {
    expect(problems.get('src/tasks/lifecycle.ts')).toEqual([]);
    expect(problems.get('src/store/rows.ts')).toEqual([]);
  });

  it('refuses an import of a higher layer', () => {
    expect(problems.get('src/store/upward.ts')).toEqual([
      expect.stringMatching(
        /^import-x\/no-restricted-paths: .*"\.\.\/tasks\/lifecycle\.js".* src\/store is on layer 8: it may import only its own folder and layers 9–12/,
      ),
    ]);
  });

  it('counts a type-only import', () => {
    expect(problems.get('src/model/type-upward.ts')).toEqual([expect.stringMatching(/^import-x\/no-restricted-paths: .*"\.\.\/tasks\/lifecycle\.js"/)]);
  });

  it('refuses an import of another folder on the same layer', () => {
    expect(problems.get('src/tokens/peer.ts')).toEqual([
      expect.stringMatching(/^import-x\/no-restricted-paths: .*"\.\.\/audit\/trail\.js".* src\/tokens is on layer 7/),
    ]);
  });

  it('refuses a cycle, also inside one folder', () => {
    expect(problems.get('src/policy/rules.ts')).toEqual([expect.stringMatching(/^import-x\/no-cycle: /)]);
    expect(problems.get('src/policy/defaults.ts')).toEqual([expect.stringMatching(/^import-x\/no-cycle: /)]);
  });

  it('refuses an import from outside src/', () => {
    expect(problems.get('src/spiffe/outside.ts')).toEqual([
      expect.stringMatching(/^import-x\/no-restricted-paths: .*"\.\.\/\.\.\/test\/helper\.js".* src\/ imports nothing outside src\//),
    ]);
  });

  it('has looked at every fixture', () => {
    expect([...problems.keys()].sort()).toEqual([
      'src/audit/trail.ts',
      'src/model/type-upward.ts',
      'src/policy/defaults.ts',
      'src/policy/rules.ts',
      'src/spiffe/outside.ts',
      'src/store/rows.ts',
      'src/store/upward.ts',
      'src/tasks/lifecycle.ts',
      'src/tokens/peer.ts',
    ]);
  });
});

describe('the layer table', () => {
  let root: string;
  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), 'layers-'));
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('refuses a tree with a folder it does not place', () => {
    mkdirSync(join(root, 'src', 'helpers'), { recursive: true });
    expect(() => layerRules(root)).toThrow('src/helpers/ has no layer: give it one in layers.config.js');
  });
});
