// Messages between the agent's thread and the catalog writer thread.
import type { ObjectState } from './volume-state.js';
import type { Durability, WriteMethod } from './writes.js';

/** The writer thread's workerData: the catalog file and how Catalog.open opens it there. */
export interface WriterData {
  file: string;
  keepFinishedOperations?: number;
}

export interface WriteCall {
  type: 'call';
  id: number;
  method: WriteMethod;
  args: unknown[];
  durability: Durability;
}

export type ToWriter = WriteCall | { type: 'close' };

/** An error as it crosses the thread boundary (structured clone drops subclasses and their fields). */
export interface WireError {
  name: string;
  message: string;
  code?: string;
  transition?: { id: string; from: ObjectState; to: ObjectState };
}

export type WriteReply = { id: number; value: unknown } | { id: number; error: WireError };

export type FromWriter =
  | { type: 'ready' }
  | { type: 'failed'; error: WireError }
  | { type: 'replies'; replies: WriteReply[] }
  | { type: 'closed' };
