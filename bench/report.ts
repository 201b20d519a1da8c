import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import type { Measurement } from './load.js';

/** One variant over all rounds of a phase: medians, and its ratio to the same round's baseline. */
export interface Comparison {
  variant: string;
  rounds: number;
  rps: number;
  p50: number;
  p99: number;
  cpuPerRequest: number;
  queriesPerRequest: number;
  /** Median over rounds of rps / baseline rps of the same round. */
  ratio: number;
  ratioMin: number;
  ratioMax: number;
  /** Median over rounds of p99 − baseline p99 of the same round, in ms. */
  addedP99: number;
  /** The baseline this variant is compared with. */
  baseline: string;
  /** Median over rounds of app CPU per request − the baseline's of the same round, in µs. */
  addedCpu: number;
  statuses: Record<string, number>;
  errors: number;
  executionsPerKey?: number;
}

export interface BenchResults {
  quick: boolean;
  settings: {
    rounds: number;
    seconds: number;
    connections: number;
    burstConnections: number;
    records: number;
    moderateRate: number;
  };
  durationSeconds: number;
  machine: { cpu: string; cores: number; memoryGiB: number; node: string; postgres: string; date: string };
  throughput: Comparison[];
  /** First executions at other numbers of connections. */
  scaling: { connections: number; rows: Comparison[] }[];
  moderate: Comparison[];
  grown: Comparison[];
  purge: {
    records: number;
    batchSize: number;
    seconds: number;
    calmMaxMs: number;
    calmP99Ms: number;
    duringMaxMs: number;
    duringP99Ms: number;
    duringErrors: number;
  };
  rss: { start: number; end: number };
}

const median = (values: number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
};

export function compare(perRound: Measurement[][]): Comparison[] {
  const names = perRound[0].map((m) => m.variant);
  const order = [...names].sort(
    (a, b) => perRound[0].findIndex((m) => m.variant === a) - perRound[0].findIndex((m) => m.variant === b),
  );
  return order.map((variant) => {
    const runs = perRound.map((round) => round.find((m) => m.variant === variant)!);
    const baseline = baselineFor(variant);
    const baselines = perRound.map((round) => round.find((m) => m.variant === baseline)!);
    const ratios = runs.map((run, i) => run.rps / baselines[i].rps);
    const statuses: Record<string, number> = {};
    for (const run of runs)
      for (const [code, count] of Object.entries(run.statuses)) statuses[code] = (statuses[code] ?? 0) + count;
    const executions = runs.map((run) => run.executionsPerKey).filter((n): n is number => n !== undefined);
    return {
      variant,
      rounds: runs.length,
      rps: median(runs.map((r) => r.rps)),
      p50: median(runs.map((r) => r.p50)),
      p99: median(runs.map((r) => r.p99)),
      cpuPerRequest: median(runs.map((r) => r.cpuPerRequest)),
      queriesPerRequest: median(runs.map((r) => r.queriesPerRequest)),
      ratio: median(ratios),
      ratioMin: Math.min(...ratios),
      ratioMax: Math.max(...ratios),
      addedP99: median(runs.map((run, i) => run.p99 - baselines[i].p99)),
      baseline,
      addedCpu: median(runs.map((run, i) => run.cpuPerRequest - baselines[i].cpuPerRequest)),
      statuses,
      errors: runs.reduce((sum, r) => sum + r.errors, 0),
      executionsPerKey: executions.length ? Math.max(...executions) : undefined,
    };
  });
}

/**
 * Each variant is compared with the baseline of its handler: the TypeORM save() one, or,
 * for the "(INSERT)" variants, the one whose handler sends a single INSERT through a pg pool.
 */
export function baselineFor(variant: string): string {
  return variant.endsWith('(INSERT)') ? 'baseline (INSERT)' : 'baseline';
}

const isBaseline = (variant: string) => variant.startsWith('baseline');
const fixed = (n: number, digits = 2) => n.toFixed(digits);
const signed = (n: number, digits = 2) => `${n >= 0 ? '+' : ''}${n.toFixed(digits)}`;

function throughputTable(rows: Comparison[]): string {
  const byName = new Map(rows.map((r) => [r.variant, r]));
  const lines = [
    '| variant | req/s | × its baseline (min–max over rounds) | p50 ms | p99 ms | app CPU µs/req (added) | SQL round trips/req (added) | responses |',
    '| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |',
  ];
  for (const r of rows) {
    const base = byName.get(r.baseline)!;
    const own = isBaseline(r.variant);
    const statuses = Object.entries(r.statuses)
      .map(([code, n]) => `${code}: ${n}`)
      .join(', ');
    const once = r.executionsPerKey === undefined ? '' : `; executions per key: ${fixed(r.executionsPerKey)}`;
    const cpu = `${Math.round(r.cpuPerRequest)}${own ? '' : ` (${signed(r.addedCpu, 0)})`}`;
    const trips = `${fixed(r.queriesPerRequest)}${own ? '' : ` (${signed(r.queriesPerRequest - base.queriesPerRequest)})`}`;
    lines.push(
      `| ${r.variant} | ${Math.round(r.rps)} | **${fixed(r.ratio)}** (${fixed(r.ratioMin)}–${fixed(r.ratioMax)}) | ${fixed(r.p50, 1)} | ${fixed(r.p99, 1)} | ${cpu} | ${trips} | ${statuses}${once} |`,
    );
  }
  return lines.join('\n');
}

function scalingTable(results: BenchResults): string {
  const lines = [
    '| connections | variant | req/s | × baseline (min–max) | p99 ms | app CPU µs/req (added) | SQL round trips/req |',
    '| ---: | --- | ---: | --- | ---: | ---: | ---: |',
  ];
  const main = { connections: results.settings.connections, rows: results.throughput };
  const levels = [...results.scaling, main].sort((a, b) => a.connections - b.connections);
  for (const { connections, rows } of levels) {
    for (const r of rows.filter((row) => ['baseline', 'lease: first', 'transactional: first'].includes(row.variant))) {
      const cpu = `${Math.round(r.cpuPerRequest)}${isBaseline(r.variant) ? '' : ` (${signed(r.addedCpu, 0)})`}`;
      lines.push(
        `| ${connections} | ${r.variant} | ${Math.round(r.rps)} | ${fixed(r.ratio)} (${fixed(r.ratioMin)}–${fixed(r.ratioMax)}) | ${fixed(r.p99, 1)} | ${cpu} | ${fixed(r.queriesPerRequest)} |`,
      );
    }
  }
  return lines.join('\n');
}

/** The figures the README quotes, each with its target. */
function headline(results: BenchResults): string {
  const t = new Map(results.throughput.map((r) => [r.variant, r]));
  const m = new Map(results.moderate.map((r) => [r.variant, r]));
  const row = (what: string, target: string, value: string) => `| ${what} | ${target} | ${value} |`;
  const ratio = (name: string) =>
    `${fixed(t.get(name)!.ratio)} (${fixed(t.get(name)!.ratioMin)}–${fixed(t.get(name)!.ratioMax)})`;
  return [
    '| figure | target | measured |',
    '| --- | --- | --- |',
    row('lease mode, first execution, × baseline (save())', '≥ 0.7', ratio('lease: first')),
    row('lease mode, first execution, × baseline (INSERT)', '≥ 0.7', ratio('lease: first (INSERT)')),
    row('transactional mode, first execution, × baseline (save())', '≥ 0.85', ratio('transactional: first')),
    row('transactional mode, first execution, × baseline (INSERT)', '≥ 0.5', ratio('transactional: first (INSERT)')),
    row(
      'replays, many keys, lease / transactional',
      '≥ 1.5',
      `${ratio('lease: replay')} / ${ratio('transactional: replay')}`,
    ),
    row(
      'replays, one hot key, lease / transactional',
      '≥ 1.5',
      `${ratio('lease: replay, one hot key')} / ${ratio('transactional: replay, one hot key')}`,
    ),
    ...(t.has('Redis: first')
      ? [
          row(
            'Redis store, first execution, × baseline (save()) / (INSERT)',
            '',
            `${ratio('Redis: first')} / ${ratio('Redis: first (INSERT)')}`,
          ),
          row(
            'Redis store, replays, many keys / one hot key',
            '',
            `${ratio('Redis: replay')} / ${ratio('Redis: replay, one hot key')}`,
          ),
        ]
      : []),
    row(
      'events + metrics on, first execution × baseline, lease / transactional (off: the rows above)',
      '',
      `${ratio('lease: first, events + metrics')} / ${ratio('transactional: first, events + metrics')}`,
    ),
    row(
      `app CPU added per first execution at ${results.settings.moderateRate} req/s, µs, lease / transactional (save())`,
      '≤ 150 / ≤ 300',
      `${Math.round(m.get('lease: first')!.addedCpu)} / ${Math.round(m.get('transactional: first')!.addedCpu)}`,
    ),
    row(
      `p99 added at ${results.settings.moderateRate} req/s, ms, lease / transactional (save())`,
      '≤ 2',
      `${fixed(m.get('lease: first')!.addedP99, 1)} / ${fixed(m.get('transactional: first')!.addedP99, 1)}`,
    ),
    row(
      'SQL round trips added per first execution, lease / transactional (save())',
      '≤ 1 / ≤ 1',
      `${signed(t.get('lease: first')!.queriesPerRequest - t.get('baseline')!.queriesPerRequest)} / ${signed(t.get('transactional: first')!.queriesPerRequest - t.get('baseline')!.queriesPerRequest)}`,
    ),
    row(
      'SQL round trips per replay, lease / transactional',
      '1',
      `${fixed(t.get('lease: replay')!.queriesPerRequest)} / ${fixed(t.get('transactional: replay')!.queriesPerRequest)}`,
    ),
  ].join('\n');
}

function markdown(results: BenchResults): string {
  const { machine: m, settings: s, purge } = results;
  const small = new Map(results.throughput.map((r) => [r.variant, r]));
  const growth = results.grown
    .filter((r) => !isBaseline(r.variant))
    .map((r) => {
      const before = small.get(r.variant)!;
      return `| ${r.variant} | ${fixed(before.ratio)} | ${fixed(r.ratio)} | ${fixed(before.p99, 1)} | ${fixed(r.p99, 1)} | ${Math.round(before.cpuPerRequest)} | ${Math.round(r.cpuPerRequest)} |`;
    });
  const moderate = results.moderate
    .map(
      (r) =>
        `| ${r.variant} | ${fixed(r.p50, 1)} | ${fixed(r.p99, 1)} | ${isBaseline(r.variant) ? '' : fixed(r.addedP99, 1)} | ${Math.round(r.cpuPerRequest)} | ${isBaseline(r.variant) ? '' : Math.round(r.addedCpu)} |`,
    )
    .join('\n');
  const mib = (bytes: number) => `${Math.round(bytes / 2 ** 20)} MiB`;
  return `# Benchmark results

Written by \`npm run bench${results.quick ? ' -- --quick' : ''}\` on ${m.date}, in ${results.durationSeconds} s.

Machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB; Node.js ${m.node}; PostgreSQL ${m.postgres}. The app, PostgreSQL
and the load generator (autocannon) share the machine. Every figure is compared with the baseline measured in the
same round of the same run; rounds run the variants interleaved, in an order rotated each round. Medians over
${s.rounds} rounds of ${s.seconds} s; the spread is the lowest and highest ratio over the rounds.

Two handlers, each behind a route without \`@Idempotent\` (its baseline), a lease-mode route and a transactional
route: one saves a row to \`payments\` with TypeORM's \`save()\` (three round trips: BEGIN, INSERT, COMMIT); the
"(INSERT)" one sends one INSERT through a pg pool (in transactional mode, through the request's transaction).
Each variant is compared with the baseline of its handler. "first" sends a fresh key with every request; "replay"
cycles through ${200} completed keys, or hammers one; a burst sends as many consecutive requests per key as it has
connections, so that they arrive together. The "Redis" variants run on a second bench app (the same code) whose
lease-mode records are in Redis (\`RedisIdempotencyStore\`); their round trips count Redis commands too. The
"events + metrics" variants run on a third bench app with an \`onEvent\` listener and \`metrics: true\` (the
OpenTelemetry SDK registered, with a reader that nothing collects during the run).

## Headline

${headline(results)}

## Throughput (${s.connections} connections)

${throughputTable(results.throughput)}

SQL round trips are counted by wrapping the driver in the app process (\`bench/server.ts\`); "added" is the
difference to the variant's baseline. Concurrent lease-mode claims and completions share statements (group
commit), so under load they cost less than one round trip each.

## First executions against load

${scalingTable(results)}

## Latency and CPU at moderate load (${s.moderateRate} requests/s, 4 connections)

| variant | p50 ms | p99 ms | p99 added to the baseline's, ms | app CPU µs/req | added to the baseline's, µs |
| --- | ---: | ---: | ---: | ---: | ---: |
${moderate}

## Growth: ${s.records.toLocaleString('en')} live records in \`idempotency_keys\`

| variant | × baseline, small table | × baseline, ${s.records.toLocaleString('en')} records | p99 ms, small | p99 ms, large | CPU µs/req, small | CPU µs/req, large |
| --- | ---: | ---: | ---: | ---: | ---: | ---: |
${growth.join('\n')}

## Purge of ${purge.records.toLocaleString('en')} expired records under live load

The library's \`purgeExpired({ batchSize: ${purge.batchSize} })\` (with its default 10 ms pause between batches) ran from another process while "lease: first" requests
arrived at ${s.moderateRate}/s: it took ${fixed(purge.seconds, 1)} s. Longest live request during the purge:
**${fixed(purge.duringMaxMs, 1)} ms** (p99 of the worst 2 s window ${fixed(purge.duringP99Ms, 1)} ms), against ${fixed(purge.calmMaxMs, 1)} ms
(p99 ${fixed(purge.calmP99Ms, 1)} ms) without a purge; failed live requests during the purge: ${purge.duringErrors}.

## Memory

App RSS after warm-up: ${mib(results.rss.start)}; after the whole run: ${mib(results.rss.end)}.

![throughput and latency](results.svg)
`;
}

function svg(results: BenchResults): string {
  const width = 760;
  const rows = results.throughput;
  const maxRps = Math.max(...rows.map((r) => r.rps));
  const barLeft = 210;
  const barWidth = width - barLeft - 120;
  const bars = rows
    .map((r, i) => {
      const y = 50 + i * 26;
      const w = Math.max(1, (r.rps / maxRps) * barWidth);
      const color = isBaseline(r.variant)
        ? '#888'
        : r.variant.startsWith('burst')
          ? '#b07aa1'
          : r.variant.includes('replay')
            ? '#59a14f'
            : '#4e79a7';
      return `<text x="${barLeft - 8}" y="${y + 14}" text-anchor="end">${r.variant}</text>
<rect x="${barLeft}" y="${y}" width="${w.toFixed(1)}" height="18" fill="${color}"/>
<text x="${barLeft + w + 6}" y="${y + 14}">${Math.round(r.rps)}/s (×${r.ratio.toFixed(2)})</text>`;
    })
    .join('\n');
  const top = 70 + rows.length * 26;
  const grown = results.grown.filter((r) => !isBaseline(r.variant));
  const small = new Map(results.throughput.map((r) => [r.variant, r]));
  const maxP99 = Math.max(...grown.flatMap((r) => [r.p99, small.get(r.variant)!.p99]));
  const groups = grown
    .map((r, i) => {
      const y = top + 50 + i * 44;
      const scale = (v: number) => Math.max(1, (v / maxP99) * barWidth);
      const before = small.get(r.variant)!.p99;
      return `<text x="${barLeft - 8}" y="${y + 18}" text-anchor="end">${r.variant}</text>
<rect x="${barLeft}" y="${y}" width="${scale(before).toFixed(1)}" height="16" fill="#a0cbe8"/>
<text x="${barLeft + scale(before) + 6}" y="${y + 12}">${before.toFixed(1)} ms (small table)</text>
<rect x="${barLeft}" y="${y + 18}" width="${scale(r.p99).toFixed(1)}" height="16" fill="#f28e2b"/>
<text x="${barLeft + scale(r.p99) + 6}" y="${y + 30}">${r.p99.toFixed(1)} ms (${results.settings.records.toLocaleString('en')} records)</text>`;
    })
    .join('\n');
  const height = top + 70 + grown.length * 44;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="12" y="24" font-size="15" font-weight="bold">Throughput per variant, ${results.settings.connections} connections (× same-round baseline)</text>
${bars}
<text x="12" y="${top + 24}" font-size="15" font-weight="bold">p99 latency against table size (${results.settings.connections} connections)</text>
${groups}
</svg>
`;
}

/** Writes bench/RESULTS.md and bench/results.svg next to the bench sources. */
export async function writeReport(results: BenchResults): Promise<string[]> {
  const folder = fileURLToPath(new URL('../../bench/', import.meta.url));
  const files = [folder + 'RESULTS.md', folder + 'results.svg'];
  await writeFile(files[0], markdown(results));
  await writeFile(files[1], svg(results));
  return files;
}
