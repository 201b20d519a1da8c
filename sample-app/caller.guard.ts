import {
  type CanActivate,
  createParamDecorator,
  type ExecutionContext,
  Injectable,
  UnauthorizedException,
} from '@nestjs/common';

/**
 * Stand-in for real authentication: the caller is whoever `X-User-Id` names. A real
 * application would verify a token here and expose the user as `request.user`.
 */
@Injectable()
export class CallerGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    callerOf(context.switchToHttp().getRequest());
    return true;
  }
}

export function callerOf(request: { headers: Record<string, unknown> }): string {
  const caller = request.headers['x-user-id'];
  if (typeof caller !== 'string' || caller.trim() === '' || caller.length > 255) {
    throw new UnauthorizedException("Send the caller's identity in the X-User-Id header.");
  }
  return caller.trim();
}

/** The authenticated caller's id. */
export const CallerId = createParamDecorator((_: unknown, context: ExecutionContext) =>
  callerOf(context.switchToHttp().getRequest()),
);
