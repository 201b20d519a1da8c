import type { INestApplication } from '@nestjs/common';
import { DocumentBuilder, SwaggerModule } from '@nestjs/swagger';

/**
 * The OpenAPI document and Swagger UI at /docs (the JSON at /docs-json). The library adds
 * what its routes need (the Idempotency-Key header, Idempotent-Replayed, the problem
 * responses) because @nestjs/swagger is installed; nothing here mentions idempotency.
 */
export function serveApiDocs(app: INestApplication): void {
  const config = new DocumentBuilder()
    .setTitle('Sample payments API')
    .setDescription(
      'Payments and e-mails made safe to retry with nestjs-idempotency-postgres. Every route but /health ' +
        'needs the caller in X-User-Id.',
    )
    .build();
  SwaggerModule.setup('docs', app, () => SwaggerModule.createDocument(app, config));
}
