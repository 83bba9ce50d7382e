/**
 * WatchedValue: the "follow a file, keep the last good value" rule the policy, the SVID files and
 * the bundle files share, on real files. Files are replaced by rename-over so no check ever
 * reads one half-written, and each check is driven by reload() rather than waited for.
 */
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { WatchedValue, type WatchedValueFailure } from '../../src/files/watched-value.js';

let dir: string;
const opened: Array<{ close(): void }> = [];
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tb-watched-'));
});
afterEach(async () => {
  for (const w of opened.splice(0)) w.close();
  await rm(dir, { recursive: true, force: true });
});

async function replace(path: string, text: string): Promise<void> {
  await writeFile(`${path}.tmp`, text);
  await rename(`${path}.tmp`, path);
}

/** Parses "n=<integer>"; anything else is refused. */
function parseNumber([text = '']: readonly string[]): number {
  const match = /^n=(\d+)$/.exec(text.trim());
  if (!match) throw new Error(`not a number line: ${JSON.stringify(text.slice(0, 20))}`);
  return Number(match[1]);
}

function watch<T>(paths: string[], parse: (texts: readonly string[]) => T) {
  const errors: Array<{ during: WatchedValueFailure; message: string }> = [];
  const value = new WatchedValue<T>(paths, parse, { pollIntervalMs: 0, onError: (err, during) => errors.push({ during, message: err.message }) });
  opened.push(value);
  return { value, errors };
}

describe('WatchedValue', () => {
  it('ready() resolves with the first value; a first load that fails rejects without reporting to onError', async () => {
    const path = join(dir, 'n');
    await writeFile(path, 'n=1\n');
    const { value, errors } = watch([path], parseNumber);
    expect(() => value.current()).toThrow(/before ready\(\) resolved/);
    expect(await value.ready()).toBe(1);
    expect(value.current()).toBe(1);
    expect(await value.ready()).toBe(1); // the same load, not a second one

    const broken = join(dir, 'broken');
    await writeFile(broken, 'nonsense');
    const refused = watch([broken], parseNumber);
    await expect(refused.value.ready()).rejects.toThrow(/not a number line/);
    await expect(watch([join(dir, 'missing')], parseNumber).value.ready()).rejects.toThrow(/ENOENT/);
    expect([...errors, ...refused.errors]).toEqual([]);
  });

  it('the same good bytes coming back after a broken version or a missing file are not delivered again; each failure is reported once', async () => {
    const path = join(dir, 'n');
    await writeFile(path, 'n=1\n');
    const { value, errors } = watch([path], parseNumber);
    await value.ready();
    const heard: number[] = [];
    value.onChange((v) => heard.push(v));
    await replace(path, 'broken');
    await value.reload();
    await value.reload();
    await replace(path, 'n=1\n');
    await value.reload();
    await rm(path);
    await value.reload();
    await value.reload();
    await replace(path, 'n=1\n');
    await value.reload();
    expect(heard).toEqual([]);
    expect(errors.map((e) => e.message)).toEqual([expect.stringMatching(/not a number line/), expect.stringMatching(/ENOENT/)]);
    await replace(path, 'n=2\n');
    await value.reload();
    expect(heard).toEqual([2]);
  });

  it('a new version replaces the value and tells listeners; a broken one is reported and the last good value stays', async () => {
    const path = join(dir, 'n');
    await writeFile(path, 'n=1');
    const { value, errors } = watch([path], parseNumber);
    await value.ready();
    const seen: Array<[number, number]> = [];
    value.onChange((next, previous) => seen.push([next, previous]));

    await replace(path, 'n=2');
    await value.reload();
    expect(value.current()).toBe(2);

    await replace(path, 'n=oops');
    await value.reload();
    expect(value.current()).toBe(2);
    expect(errors).toEqual([{ during: 'reload', message: expect.stringMatching(/not a number line/) }]);

    // The same broken bytes are not parsed (or reported) again on the next check.
    await value.reload();
    expect(errors).toHaveLength(1);

    await rm(path);
    await value.reload();
    expect(errors[1]).toMatchObject({ during: 'reload', message: expect.stringMatching(/ENOENT/) });

    await replace(path, 'n=3');
    await value.reload();
    expect(value.current()).toBe(3);
    expect(seen).toEqual([
      [2, 1],
      [3, 2],
    ]);
  });

  it('reads several files as one value, in the order of the paths', async () => {
    const a = join(dir, 'a');
    const b = join(dir, 'b');
    await writeFile(a, 'left');
    await writeFile(b, 'right');
    const { value } = watch([a, b], (texts) => texts.join('+'));
    expect(await value.ready()).toBe('left+right');
    await replace(b, 'RIGHT');
    await value.reload();
    expect(value.current()).toBe('left+RIGHT');
  });

  it('a listener that throws is reported and the others still hear of the change', async () => {
    const path = join(dir, 'n');
    await writeFile(path, 'n=1');
    const { value, errors } = watch([path], parseNumber);
    await value.ready();
    const heard: number[] = [];
    value.onChange(() => {
      throw new Error('listener broke');
    });
    value.onChange((next) => heard.push(next));
    await replace(path, 'n=2');
    await value.reload();
    expect(value.current()).toBe(2);
    expect(heard).toEqual([2]);
    expect(errors).toEqual([{ during: 'listener', message: 'listener broke' }]);
  });

  it('an unsubscribed listener hears nothing, and after close() the files are no longer followed', async () => {
    const path = join(dir, 'n');
    await writeFile(path, 'n=1');
    const { value } = watch([path], parseNumber);
    await value.ready();
    let calls = 0;
    const unsubscribe = value.onChange(() => calls++);
    unsubscribe();
    await replace(path, 'n=2');
    await value.reload();
    expect(value.current()).toBe(2);
    expect(calls).toBe(0);

    value.onChange(() => calls++);
    value.close();
    await replace(path, 'n=3');
    await value.reload();
    expect(value.current()).toBe(2);
    expect(calls).toBe(0);
  });
});
