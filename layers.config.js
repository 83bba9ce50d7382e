// @ts-check
/**
 * The layers of src/, top to bottom, and the lint rules that hold the code to them
 * (eslint.config.js applies them; test/lint/layers.test.ts shows that they bite).
 *
 * A file may import its own folder and the folders of strictly lower layers: never a higher
 * layer, and never another folder of its own layer (two peers that need each other need a third,
 * lower module). There are no import cycles, not even inside one folder. bench/ and test/ may
 * import anything in src/; src/ imports nothing outside itself but packages.
 *
 *    1  cli            the command line: parses flags, prints, exits
 *    2  app            the composition root: configuration, identity set-up, assembly of a broker
 *    3  api            gRPC handlers: decode a request, call the domain, encode the answer
 *       http           the ops HTTP server and what it serves (JWKS, health, readiness, metrics)
 *       verifier       the SDK for resource servers: offline verification, revocation stream,
 *                      access reports, HTTP middleware (it builds on client)
 *       devca          a local certificate authority for `dev-ca`, the demo and the tests
 *       mcp            the MCP integration: MCP Tasks guarded by the broker (it builds on client)
 *    4  client         the SDK for workloads and admins
 *    5  transport      the mTLS gRPC server and the verified caller behind each call
 *    6  tasks          the task domain: lifecycle, admin operations, validation
 *    7  policy         who may do what
 *       tokens         signing keys and task tokens
 *       audit          the hash-chained audit trail
 *    8  store          the database, migrations and transactions
 *       spiffe         SPIFFE IDs, SVIDs, trust bundles, the Workload API
 *    9  observability  logging, metrics, readiness
 *   10  protocol       proto loading and wire conversions (enum names, Struct, Timestamp)
 *   11  model          the domain's vocabulary (Task, TaskState, Actor, VerifyReason)
 *       files          paths inside the installed package, watched files
 *   12  gen            types generated from proto/
 *       errors.ts      the error kinds every layer may raise
 *       types          ambient type declarations
 *
 * A file directly under src/ other than errors.ts counts as app (until app/ holds them all).
 * A new folder under src/ must be given a layer here: lint refuses a tree with one it cannot place.
 *
 * Type-only imports count for the layers. The cycle rule (import-x/no-cycle) follows only imports
 * that remain at run time: an `import type` is erased by the compiler and cannot change the order
 * modules initialise in.
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import importX, { createNodeResolver } from 'eslint-plugin-import-x';

/** Layer 1 first; each entry is a folder of src/ or a file directly under it. */
export const LAYERS = [
  ['cli'],
  ['app'],
  ['api', 'http', 'verifier', 'devca', 'mcp'],
  ['client'],
  ['transport'],
  ['tasks'],
  ['policy', 'tokens', 'audit'],
  ['store', 'spiffe'],
  ['observability'],
  ['protocol'],
  ['model', 'files'],
  ['gen', 'errors.ts', 'types'],
];

const APP = LAYERS.findIndex((layer) => layer.includes('app'));

/** @param {number} r */
function allowed(r) {
  const own = r === APP ? 'its own layer' : 'its own folder';
  if (r === LAYERS.length - 1) return own;
  return `${own} and layers ${r + 2}–${LAYERS.length}`;
}

/**
 * The flat-config entries that enforce the layers for the tree at `root` (the repository; the
 * test passes a fixture tree). Reads `root/src` to place the files directly under it and to
 * refuse a folder that has no layer.
 */
export function layerRules(root = import.meta.dirname) {
  const rank = new Map(LAYERS.flatMap((units, i) => units.map((unit) => [unit, i])));
  for (const entry of readdirSync(join(root, 'src'), { withFileTypes: true })) {
    if (rank.has(entry.name)) continue;
    if (entry.isDirectory()) throw new Error(`src/${entry.name}/ has no layer: give it one in layers.config.js`);
    rank.set(entry.name, APP);
  }
  const zones = [...rank].map(([unit, r]) => ({
    target: `src/${unit}`,
    from: 'src',
    // What is not excepted (a peer, a higher layer) is refused. app/ and the files beside it are one unit.
    except: [...rank].filter(([other, o]) => other === unit || o > r || (r === APP && o === APP)).map(([other]) => `./${other}`),
    message: `src/${unit} is on layer ${r + 1}: it may import only ${allowed(r)} (layers.config.js).`,
  }));
  zones.push({ target: 'src', from: '.', except: ['./src', './node_modules'], message: 'src/ imports nothing outside src/ but packages.' });
  return [
    {
      files: ['src/**/*.ts'],
      plugins: { 'import-x': importX },
      settings: {
        // Imports name the emitted .js file; the source is the .ts beside it.
        'import-x/resolver-next': [createNodeResolver({ extensions: ['.ts', '.js'], extensionAlias: { '.js': ['.ts', '.js'] } })],
        'import-x/extensions': ['.ts', '.js'],
      },
      rules: {
        'import-x/no-restricted-paths': ['error', { basePath: root, zones }],
        'import-x/no-cycle': ['error', { ignoreExternal: true }],
      },
    },
  ];
}
