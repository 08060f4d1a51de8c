// Cancellation in the shape Node's own APIs use (fs.readFile with a signal):
// an Error named AbortError with code ABORT_ERR and the reason as its cause.

export interface AbortError extends Error {
  code: 'ABORT_ERR';
}

export function abortError(signal: AbortSignal): AbortError {
  const error = new Error('The operation was aborted', { cause: signal.reason }) as AbortError;
  error.name = 'AbortError';
  error.code = 'ABORT_ERR';
  return error;
}

export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortError(signal);
}

export function isAbortError(value: unknown): value is AbortError {
  return value instanceof Error && (value as Partial<AbortError>).code === 'ABORT_ERR';
}
