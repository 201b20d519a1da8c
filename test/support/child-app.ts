import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** A compiled entry script of test/support running as a process of its own. */
export interface ChildApp {
  name: string;
  child: ChildProcess;
  /** Everything the process printed, for failure messages and for lines the test waits for. */
  output(): string;
  /** Resolves with the first match of `pattern` in the output, printed already or later. */
  waitForOutput(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  /** SIGTERM (a graceful stop, SIGKILL after 5 s) by default; SIGKILL is a crash. Resolves once it has exited. */
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/**
 * Starts `node dist/test/support/<script>.js` with `env` and resolves once it prints
 * a line `ready`: each entry script prints it when its application has started.
 */
export async function startChildApp(script: string, name: string, env: Record<string, string>): Promise<ChildApp> {
  const path = fileURLToPath(new URL(`./${script}.js`, import.meta.url));
  const child = spawn(process.execPath, [path], {
    env: { ...process.env, NO_COLOR: '1', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const listeners = new Set<() => void>();
  const notify = () => {
    for (const listener of listeners) listener();
  };
  const onData = (chunk: Buffer) => {
    output += chunk.toString();
    notify();
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  // 'close' comes after the output has been read to its end, unlike 'exit'.
  let closed = false;
  const whenClosed = new Promise<void>((resolve) =>
    child.once('close', () => {
      closed = true;
      notify();
      resolve();
    }),
  );

  const waitForOutput = (pattern: RegExp, timeoutMs = 30_000) =>
    new Promise<RegExpMatchArray>((resolve, reject) => {
      const finish = (error: Error | undefined, match?: RegExpMatchArray) => {
        clearTimeout(timer);
        listeners.delete(check);
        if (error) reject(error);
        else resolve(match!);
      };
      const check = () => {
        const match = pattern.exec(output);
        if (match) finish(undefined, match);
        else if (closed) finish(new Error(`${name} exited before printing ${pattern}:\n${output}`));
      };
      const timer = setTimeout(() => finish(new Error(`${name} did not print ${pattern}:\n${output}`)), timeoutMs);
      listeners.add(check);
      check();
    });

  const app: ChildApp = {
    name,
    child,
    output: () => output,
    waitForOutput,
    async stop(signal = 'SIGTERM') {
      if (!closed) child.kill(signal);
      // A process that does not stop in time is killed, so that no test leaves one behind.
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await whenClosed;
      clearTimeout(timer);
    },
  };
  try {
    // Generous: on a loaded machine a Nest application takes seconds to load and start.
    await waitForOutput(/^ready$/m, 90_000);
  } catch (error) {
    await app.stop('SIGKILL');
    throw error;
  }
  return app;
}
