// The catalog writer thread: owns the agent's only write connection. Calls
// that arrive while a commit is in progress (its fsync can take hundreds of
// milliseconds under heavy writeback) wait in the message port and are
// committed together in the next transaction (writer-group.ts).
import { parentPort, workerData } from 'node:worker_threads';

import { Catalog } from './catalog.js';
import { commitGroup, toWire } from './writer-group.js';
import type { FromWriter, ToWriter, WriteCall, WriterData } from './writer-wire.js';

const port = parentPort!;
const send = (message: FromWriter): void => port.postMessage(message);

function openCatalog(): Catalog | undefined {
  try {
    const { file, keepFinishedOperations } = workerData as WriterData;
    return Catalog.open(file, { keepFinishedOperations });
  } catch (error) {
    send({ type: 'failed', error: toWire(error) });
    port.close(); // nothing else keeps the thread alive: it ends
    return undefined;
  }
}

function serve(catalog: Catalog): void {

  const queue: WriteCall[] = [];
  let scheduled = false;
  let closing = false;

  /** Commits everything queued in one transaction, then answers each call. */
  const commitQueued = (): void => {
    scheduled = false;
    const batch = queue.splice(0);
    if (batch.length > 0) send({ type: 'replies', replies: commitGroup(catalog, batch) });
  };

  port.on('message', (message: ToWriter) => {
    if (message.type === 'call') {
      if (closing) {
        send({ type: 'replies', replies: [{ id: message.id, error: { name: 'Error', message: 'the catalog writer is closed' } }] });
        return;
      }
      queue.push(message);
      if (!scheduled) {
        scheduled = true;
        setImmediate(commitQueued);
      }
      return;
    }
    closing = true;
    commitQueued();
    catalog.close();
    send({ type: 'closed' });
    port.close();
  });
  send({ type: 'ready' });
}

const catalog = openCatalog();
if (catalog) serve(catalog);
