#!/usr/bin/env node
import pg from 'pg';
import { parseArgs } from 'node:util';
import { describeError } from '../errors.js';
import { IDEMPOTENCY_SCHEMA_SQL } from '../storage/postgres/schema.js';
import { COMMANDS } from './commands.js';
import { UsageError } from './format.js';

const USAGE = `Usage: nestjs-idempotency-postgres <command> [options]

Operates the idempotency_keys table of the database in DATABASE_URL (or --database-url).

Commands:
  inspect   one record: status, owner, lease, age, expiry, and whether a request's
            fingerprint matches (--body JSON or --body-file, --query JSON, --params JSON)
  list      in-progress records, oldest first (--older-than 30s|5m|1h, --limit N)
  release   free an in-progress key whose owner is gone (the next request runs)
  delete    delete a record, completed or not (the next request runs afresh)
  purge     delete expired records in batches, with progress on stderr
            (--dry-run, --batch-size N, --max-batches N, --pause-ms N)
  stats     counts by status and route, the oldest record, expired rows, table size
  migrate   create the tables, or bring them up to date, without TypeORM: applies the
            package's sql/idempotency.sql, re-runnable; says what it created or changed
            (needs a role that may create tables). --print writes the SQL to stdout
            instead, for other migration tools, with no database

A record is named by --route (e.g. /payments; for run() and @IdempotentMethod(), the
operation's name), --key, --method (default POST; "call" for run()) and --scope (the
caller's scope as the application's scope resolver gives it; default "").

Options:
  --json                 machine-readable output on stdout
  --print                migrate: the SQL, not applied
  --database-url URL     instead of DATABASE_URL
  --fingerprint-secret S the application's fingerprintSecret, if it sets one
  -h, --help

Exit status: 0 done; 1 failed (database error); 2 wrong usage; 3 no such record, or
not in the state the command needs.`;

const OPTIONS = {
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  'database-url': { type: 'string' },
  scope: { type: 'string' },
  method: { type: 'string' },
  route: { type: 'string' },
  key: { type: 'string' },
  body: { type: 'string' },
  'body-file': { type: 'string' },
  query: { type: 'string' },
  'no-query': { type: 'boolean' },
  params: { type: 'string' },
  'fingerprint-secret': { type: 'string' },
  'older-than': { type: 'string' },
  limit: { type: 'string' },
  'dry-run': { type: 'boolean' },
  'batch-size': { type: 'string' },
  'max-batches': { type: 'string' },
  'pause-ms': { type: 'string' },
  print: { type: 'boolean' },
} as const;

/** At most one progress line a second when stderr is not a terminal (a log file, CI). */
const PROGRESS_INTERVAL_MS = 1000;

function progressReporter(stream: NodeJS.WriteStream): (line: string, final: boolean) => void {
  let last = 0;
  return (line, final) => {
    if (stream.isTTY) {
      stream.write(`\r${line}${final ? '\n' : ''}`);
      return;
    }
    const now = Date.now();
    if (final || now - last >= PROGRESS_INTERVAL_MS) {
      last = now;
      stream.write(line + '\n');
    }
  };
}

async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  const [name, ...extra] = positionals;
  if (!name) throw new UsageError('no command given');
  const command = COMMANDS[name];
  if (!command) throw new UsageError(`unknown command: ${name}`);
  if (extra.length) throw new UsageError(`unexpected arguments: ${extra.join(' ')}`);
  if (values.print) {
    if (name !== 'migrate') throw new UsageError('--print is an option of migrate');
    // Before the database URL is looked for: piping the SQL into another tool needs none.
    process.stdout.write(IDEMPOTENCY_SCHEMA_SQL);
    return 0;
  }
  const url = values['database-url'] ?? process.env.DATABASE_URL;
  if (!url) throw new UsageError('DATABASE_URL is not set (or pass --database-url)');

  const client = new pg.Client({ connectionString: url, application_name: 'nestjs-idempotency-postgres cli' });
  await client.connect();
  try {
    const result = await command({
      db: client,
      options: values,
      progress: progressReporter(process.stderr),
    });
    process.stdout.write((values.json ? JSON.stringify(result.json, null, 2) : result.text) + '\n');
    return result.status;
  } finally {
    await client.end();
  }
}

main(process.argv.slice(2)).then(
  (status) => (process.exitCode = status),
  (error: unknown) => {
    if (error instanceof UsageError) {
      process.stderr.write(`error: ${error.message}\n\n${USAGE}\n`);
      process.exitCode = 2;
    } else {
      process.stderr.write(`error: ${describeError(error)}\n`);
      process.exitCode = 1;
    }
  },
);
