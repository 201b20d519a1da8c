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
    const baselines = perRound.map((round) => round.find((m) => m.variant === 'baseline')!);
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
      statuses,
      errors: runs.reduce((sum, r) => sum + r.errors, 0),
      executionsPerKey: executions.length ? Math.max(...executions) : undefined,
    };
  });
}

const fixed = (n: number, digits = 2) => n.toFixed(digits);
const baselineOf = (rows: Comparison[]) => rows.find((r) => r.variant === 'baseline')!;

function throughputTable(rows: Comparison[]): string {
  const base = baselineOf(rows);
  const lines = [
    '| variant | req/s | × baseline (min–max over rounds) | p50 ms | p99 ms | app CPU µs/req | × baseline CPU | SQL round trips/req (added) | responses |',
    '| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |',
  ];
  for (const r of rows) {
    const added =
      r.variant === 'baseline'
        ? ''
        : ` (${r.queriesPerRequest - base.queriesPerRequest >= 0 ? '+' : ''}${fixed(r.queriesPerRequest - base.queriesPerRequest)})`;
    const statuses = Object.entries(r.statuses)
      .map(([code, n]) => `${code}: ${n}`)
      .join(', ');
    const once = r.executionsPerKey === undefined ? '' : `; executions per key: ${fixed(r.executionsPerKey)}`;
    lines.push(
      `| ${r.variant} | ${Math.round(r.rps)} | **${fixed(r.ratio)}** (${fixed(r.ratioMin)}–${fixed(r.ratioMax)}) | ${fixed(r.p50, 1)} | ${fixed(r.p99, 1)} | ${Math.round(r.cpuPerRequest)} | ${fixed(r.cpuPerRequest / base.cpuPerRequest)} | ${fixed(r.queriesPerRequest)}${added} | ${statuses}${once} |`,
    );
  }
  return lines.join('\n');
}

function markdown(results: BenchResults): string {
  const { machine: m, settings: s, purge } = results;
  const small = new Map(results.throughput.map((r) => [r.variant, r]));
  const growth = results.grown
    .filter((r) => r.variant !== 'baseline')
    .map((r) => {
      const before = small.get(r.variant)!;
      return `| ${r.variant} | ${fixed(before.ratio)} | ${fixed(r.ratio)} | ${fixed(before.p99, 1)} | ${fixed(r.p99, 1)} | ${Math.round(before.cpuPerRequest)} | ${Math.round(r.cpuPerRequest)} |`;
    });
  const moderate = results.moderate
    .map(
      (r) =>
        `| ${r.variant} | ${fixed(r.p50, 1)} | ${fixed(r.p99, 1)} | ${r.variant === 'baseline' ? '' : fixed(r.addedP99, 1)} |`,
    )
    .join('\n');
  const mib = (bytes: number) => `${Math.round(bytes / 2 ** 20)} MiB`;
  return `# Benchmark results

Written by \`npm run bench${results.quick ? ' -- --quick' : ''}\` on ${m.date}, in ${results.durationSeconds} s.

Machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB; Node.js ${m.node}; PostgreSQL ${m.postgres}. The app, PostgreSQL
and the load generator (autocannon) share the machine. Every figure is compared with the baseline measured in the
same round of the same run; rounds run the variants interleaved, in an order rotated each round. Medians over
${s.rounds} rounds of ${s.seconds} s; the spread is the lowest and highest ratio over the rounds.

The handler is the same for every variant: it saves one row to \`payments\` with TypeORM's \`save()\`. The baseline
is that route without \`@Idempotent\`. "first" sends a fresh key with every request; "replay" cycles through
${200} completed keys; a burst sends 50 consecutive requests per key over ${s.burstConnections} connections.

## Throughput (${s.connections} connections)

${throughputTable(results.throughput)}

SQL round trips are counted by wrapping the driver in the app process (\`bench/server.ts\`); "added" is the
difference to the baseline, whose \`save()\` costs three (BEGIN, INSERT, COMMIT).

## Latency at moderate load (${s.moderateRate} requests/s, 4 connections)

| variant | p50 ms | p99 ms | p99 added to the baseline's, ms |
| --- | ---: | ---: | ---: |
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
      const color =
        r.variant === 'baseline'
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
  const grown = results.grown.filter((r) => r.variant !== 'baseline');
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
