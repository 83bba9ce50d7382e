/**
 * Reads the Dockerfile the way the deploy tests need it (no Docker engine here to build it):
 * stages, their instructions with continuation lines joined, LABELs, ARG defaults and the
 * files the runtime stage copies from the build stage.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ROOT } from './render.js';

export interface DockerStage {
  /** The image reference of FROM, digest included. */
  from: string;
  name?: string;
  /** Instructions after FROM, one per logical line, comments left out. */
  lines: string[];
}

export function dockerStages(text: string): DockerStage[] {
  const logical = text
    .replace(/\\\r?\n/g, ' ')
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'));
  const stages: DockerStage[] = [];
  for (const line of logical) {
    const from = /^FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$/i.exec(line);
    if (from) stages.push({ from: from[1] ?? '', name: from[2], lines: [] });
    else stages.at(-1)?.lines.push(line);
  }
  return stages;
}

export async function loadDockerfile(): Promise<{ text: string; stages: DockerStage[] }> {
  const text = await readFile(join(ROOT, 'Dockerfile'), 'utf8');
  return { text, stages: dockerStages(text) };
}

export function instructions(stage: DockerStage, keyword: string): string[] {
  const prefix = new RegExp(`^${keyword}\\s+`, 'i');
  return stage.lines.filter((l) => prefix.test(l)).map((l) => l.replace(prefix, ''));
}

/** key="value" or key=value pairs, as LABEL and ARG take them. */
function pairs(text: string): Map<string, string> {
  const found = new Map<string, string>();
  for (const m of text.matchAll(/([A-Za-z0-9_.-]+)(?:=(?:"((?:[^"\\]|\\.)*)"|(\S*)))?/g)) {
    found.set(m[1] ?? '', m[2] ?? m[3] ?? '');
  }
  return found;
}

export function labels(stage: DockerStage): Map<string, string> {
  return new Map(instructions(stage, 'LABEL').flatMap((l) => [...pairs(l)]));
}

/** ARG names with their defaults ('' when none). */
export function args(stage: DockerStage): Map<string, string> {
  return new Map(instructions(stage, 'ARG').flatMap((l) => [...pairs(l)]));
}

/** The runtime stage's `COPY --from=<stage> SRC DEST`, with SRC relative to the build stage's WORKDIR. */
export function copiesFrom(stage: DockerStage, from: DockerStage): { source: string; destination: string }[] {
  const workdir = instructions(from, 'WORKDIR').at(-1) ?? '/';
  return instructions(stage, 'COPY')
    .map((l) => l.split(/\s+/))
    .filter((words) => words.includes(`--from=${from.name}`))
    .map((words) => {
      const [source = '', destination = ''] = words.filter((w) => !w.startsWith('--'));
      return { source: source.startsWith(`${workdir}/`) ? source.slice(workdir.length + 1) : source, destination };
    });
}

/** The packages a stage drops from package.json's dependencies (`npm pkg delete "dependencies.<name>"`). */
export function deletedDependencies(stage: DockerStage): string[] {
  return instructions(stage, 'RUN')
    .flatMap((run) => run.split(/\s*&&\s*/))
    .filter((command) => command.startsWith('npm pkg delete '))
    .flatMap((command) => [...command.matchAll(/"?dependencies\.((?:@[^/\s"]+\/)?[^\s"]+)"?/g)].map((m) => m[1] ?? ''));
}
