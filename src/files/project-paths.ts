/**
 * Locations inside the installed package (proto/, migrations/), found the same way whether the
 * code runs from src/ under vitest or from dist/ after a build.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

function findPackageRoot(start: string): string {
  let dir = start;
  for (;;) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'proto'))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`task-broker: package root not found above ${start}`);
    dir = parent;
  }
}

export const packageRoot = findPackageRoot(dirname(fileURLToPath(import.meta.url)));
export const protoDir = join(packageRoot, 'proto');
export const migrationsDir = join(packageRoot, 'migrations');
