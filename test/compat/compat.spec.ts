import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
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
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The compatibility matrix: each folder under test/compat/ is a small application with its
 * own package.json and package-lock.json. Once per run the library is built and packed as
 * it would be published; each application then installs its locked dependencies plus that
 * tarball, and runs its own test suite against PostgreSQL. The README's "Compatibility"
 * table lists the same applications.
 */
const CONSUMERS = [
  'nest11-cjs-jest',
  'nest12-esm-vitest',
  'nest12-fastify-typeorm03',
  'floor',
  'nest12-drizzle',
  'nest11-kysely-cjs',
];

const ROOT = fileURLToPath(new URL('../../../', import.meta.url)); // from dist/test/compat/
const SOURCES = join(ROOT, 'test/compat');
// Installs are kept between runs, one folder per lockfile content, so that only a changed
// lockfile costs a fresh `npm ci`. They live outside the repository (one cache per clone):
// inside it, Node's resolution climbs from a consumer's node_modules into the repository's
// own, and a consumer would load what it does not install (TypeORM, in the apps without it).
const CACHE = join(
  tmpdir(),
  `nestjs-idempotency-compat-${createHash('sha256').update(ROOT).digest('hex').slice(0, 12)}`,
);
const CONSUMER_TIMEOUT_MS = 10 * 60_000;

interface Run {
  code: number | null;
  stdout: string;
  /** stdout and stderr interleaved, for failure messages. */
  output: string;
}

/**
 * The environment of a child npm: this run's, without what the outer `npm test` put there
 * for its own package (npm_package_*, npm_lifecycle_*, prefixes), which would leak into the
 * consumer's npm.
 */
function childEnvironment(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env)) {
    const npmOwn = /^npm_/i.test(name) && !/^npm_config_(cache|registry|userconfig|globalconfig)$/i.test(name);
    if (!npmOwn && name !== 'JEST_WORKER_ID' && name !== 'INIT_CWD') env[name] = value;
  }
  return { ...env, NO_COLOR: '1', FORCE_COLOR: '0', ...extra };
}

function run(command: string, args: string[], cwd: string, extraEnv: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd, env: childEnvironment(extraEnv), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      output += chunk.toString();
    });
    child.stderr.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, output }));
  });
}

async function mustRun(what: string, command: string, args: string[], cwd: string, env?: Record<string, string>) {
  const result = await run(command, args, cwd, env);
  if (result.code !== 0) {
    throw new Error(`${what}: \`${command} ${args.join(' ')}\` exited with ${result.code}\n${result.output}`);
  }
  return result;
}

/**
 * The consumer's folder in the cache with `npm ci` done for its current lockfile, and the
 * consumer's own files copied in afresh.
 */
async function prepareConsumer(name: string): Promise<{ dir: string; lockfile: Buffer }> {
  const source = join(SOURCES, name);
  const lockfile = readFileSync(join(source, 'package-lock.json'));
  const hash = createHash('sha256').update(lockfile).digest('hex').slice(0, 16);
  const dir = join(CACHE, `${name}-${hash}`);
  const marker = join(dir, '.installed');

  mkdirSync(CACHE, { recursive: true });
  for (const entry of readdirSync(CACHE)) {
    if (entry.startsWith(`${name}-`) && entry !== basename(dir))
      rmSync(join(CACHE, entry), { recursive: true, force: true });
  }
  if (!existsSync(marker)) {
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true });
    cpSync(join(source, 'package.json'), join(dir, 'package.json'));
    cpSync(join(source, 'package-lock.json'), join(dir, 'package-lock.json'));
    await mustRun(`${name}: installing its locked dependencies`, 'npm', ['ci', '--no-audit', '--no-fund'], dir);
    writeFileSync(marker, '');
  }

  for (const entry of readdirSync(dir)) {
    if (entry !== 'node_modules' && entry !== '.installed') rmSync(join(dir, entry), { recursive: true, force: true });
  }
  cpSync(source, dir, { recursive: true, filter: (path) => basename(path) !== 'node_modules' });
  return { dir, lockfile };
}

describe('compatibility matrix', () => {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
  let packDir: string;
  let tarball: string;
  let packedFiles: string[];

  beforeAll(async () => {
    await mustRun('building the package', 'npm', ['run', 'build:package'], ROOT);
    packDir = mkdtempSync(join(tmpdir(), 'idempotency-pack-'));
    // Scripts are skipped because the build just ran; prepack would only repeat it.
    const pack = await mustRun(
      'packing',
      'npm',
      ['pack', '--json', '--ignore-scripts', '--pack-destination', packDir],
      ROOT,
    );
    const [packed] = JSON.parse(pack.stdout) as [{ filename: string; files: { path: string }[] }];
    tarball = join(packDir, packed.filename);
    packedFiles = packed.files.map((file) => file.path).sort();
  }, 180_000);

  afterAll(() => {
    if (packDir) rmSync(packDir, { recursive: true, force: true });
  });

  it('packs only the package build, the schema as SQL, README, LICENSE, CHANGELOG and package.json', () => {
    const allowed = [
      /^(package\.json|README\.md|LICENSE|CHANGELOG\.md)$/,
      /^sql\/idempotency\.sql$/,
      /^dist\/cjs\/package\.json$/,
      /^dist\/(esm|cjs)\/(lib|migrations)\/.+\.(js|d\.ts)$/,
    ];
    expect(packedFiles.filter((path) => !allowed.some((pattern) => pattern.test(path)))).toEqual([]);
    expect(packedFiles).toEqual(
      expect.arrayContaining([
        'package.json',
        'README.md',
        'LICENSE',
        'CHANGELOG.md',
        'dist/cjs/package.json',
        'sql/idempotency.sql',
      ]),
    );
    // Both builds are complete, with a declaration beside every module.
    const built = (format: string) =>
      packedFiles
        .filter((path) => path.startsWith(`dist/${format}/`) && path !== 'dist/cjs/package.json')
        .map((path) => path.slice(9));
    expect(built('cjs')).toEqual(built('esm'));
    for (const path of packedFiles.filter((file) => file.endsWith('.js'))) {
      expect(packedFiles).toContain(path.replace(/\.js$/, '.d.ts'));
    }
  });

  it('points every export condition at a packed file, and marks the CommonJS build as such', () => {
    const targets: string[] = [pkg.main, pkg.types];
    for (const entry of Object.values(pkg.exports as Record<string, unknown>)) {
      if (typeof entry === 'string') continue;
      const conditions = entry as Record<string, Record<string, string>>;
      expect(Object.keys(conditions)).toEqual(['import', 'require']);
      for (const condition of Object.values(conditions)) {
        expect(Object.keys(condition)).toEqual(['types', 'default']);
        targets.push(...Object.values(condition));
      }
    }
    for (const target of targets) expect(packedFiles).toContain(target.replace(/^\.\//, ''));
    expect(JSON.parse(readFileSync(join(ROOT, 'dist/cjs/package.json'), 'utf8'))).toEqual({ type: 'commonjs' });
  });

  it('keeps the doc comments in the declaration files', () => {
    for (const format of ['esm', 'cjs']) {
      const declarations = packedFiles.filter((path) => path.startsWith(`dist/${format}/`) && path.endsWith('.d.ts'));
      const options = declarations
        .map((path) => readFileSync(join(ROOT, path), 'utf8'))
        .find((text) => text.includes('interface IdempotencyModuleOptions'));
      expect(options).toMatch(/\/\*\*[\s\S]*?\*\/\s*scope\?:/);
    }
  });

  it('tests every consumer application under test/compat', () => {
    const folders = readdirSync(SOURCES).filter((entry) => statSync(join(SOURCES, entry)).isDirectory());
    expect(folders.sort()).toEqual([...CONSUMERS].sort());
  });

  for (const name of CONSUMERS) {
    it(
      `${name}: installs the packed library and passes its own tests`,
      async () => {
        const databaseUrl = process.env.DATABASE_URL;
        if (!databaseUrl) throw new Error('DATABASE_URL is not set: the Jest global setup should have set it');
        const { dir, lockfile } = await prepareConsumer(name);

        // A plain install (no --force, no --legacy-peer-deps): the peer ranges must accept
        // this combination. --no-save leaves package.json and the lockfile as committed.
        rmSync(join(dir, 'node_modules/nestjs-idempotency-postgres'), { recursive: true, force: true });
        await mustRun(
          `${name}: installing the tarball`,
          'npm',
          ['install', '--no-save', '--no-audit', '--no-fund', tarball],
          dir,
        );
        expect(readFileSync(join(dir, 'package-lock.json')).equals(lockfile)).toBe(true);
        const installed = JSON.parse(
          readFileSync(join(dir, 'node_modules/nestjs-idempotency-postgres/package.json'), 'utf8'),
        );
        expect(installed.version).toBe(pkg.version);
        // The package's bin as an installed application runs it; --help loads its whole module graph.
        const help = await mustRun(
          `${name}: the package's bin`,
          'npx',
          ['--no-install', 'nestjs-idempotency-postgres', '--help'],
          dir,
        );
        expect(help.stdout).toContain('Usage: nestjs-idempotency-postgres <command>');
        // The schema as SQL is in the installed package, and is what the installed bin prints.
        const printed = await mustRun(
          `${name}: migrate --print`,
          'npx',
          ['--no-install', 'nestjs-idempotency-postgres', 'migrate', '--print'],
          dir,
        );
        expect(printed.stdout).toBe(
          readFileSync(join(dir, 'node_modules/nestjs-idempotency-postgres/sql/idempotency.sql'), 'utf8'),
        );

        await mustRun(`${name}: its test suite`, 'npm', ['test'], dir, { DATABASE_URL: databaseUrl });
      },
      CONSUMER_TIMEOUT_MS,
    );
  }
});
