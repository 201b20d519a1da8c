import type { INestApplication } from '@nestjs/common';
import { metrics } from '@opentelemetry/api';
import { PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import { MeterProvider } from '@opentelemetry/sdk-metrics';
import type { IncomingMessage, ServerResponse } from 'node:http';

/**
 * With METRICS=1: registers the OpenTelemetry SDK with a Prometheus exporter before the
 * application starts (the library records through @opentelemetry/api alone), and returns
 * what serves the exposition at GET /metrics on the app's own port. Without it, nothing.
 */
export function startMetrics(enabled: boolean): ((app: INestApplication) => void) | undefined {
  if (!enabled) return undefined;
  const exporter = new PrometheusExporter({ preventServerStart: true });
  metrics.setGlobalMeterProvider(new MeterProvider({ readers: [exporter] }));
  return (app) => {
    app.use('/metrics', (request: IncomingMessage, response: ServerResponse, next: () => void) => {
      if (request.method !== 'GET') return next();
      exporter.getMetricsRequestHandler(request, response);
    });
  };
}
