import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** The compiled command-line tool (dist/lib/cli/main.js). */
export const CLI = fileURLToPath(new URL('../../lib/cli/main.js', import.meta.url));

export interface CliRun {
  status: number | null;
  stdout: string;
  stderr: string;
  json: any;
}

/** The compiled command-line tool as a real process, with the environment given (and nothing of the test's DATABASE_URL unless given). */
export function cli(args: string[], env: Record<string, string | undefined>): Promise<CliRun> {
  const inherited = { ...process.env };
  delete inherited.DATABASE_URL;
  const child = spawn(process.execPath, [CLI, ...args], {
    env: { ...inherited, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (status) => {
      let json: unknown;
      try {
        json = JSON.parse(stdout);
      } catch {
        json = undefined;
      }
      resolve({ status, stdout, stderr, json });
    });
  });
}
