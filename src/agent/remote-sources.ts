// Volumes pulled from another host's agent (docs/design.md "Hosts
// together"). The peer exports the source read-only over NBD; the control
// plane, which knows where each volume lives, tells this agent the export's
// URI, its size and (optionally) the peer's volume id. This agent connects
// with its own `[nbd] tls` credentials (TCP never in plain text unless
// `plaintext_tcp` allows it), checks that the export is the one named, and
// copies only its data extents (base:allocation) into a new object of a
// pool (Pool.populate). Failures of the peer or of the way to it are
// REMOTE_FAILED (502), an export that is not the one named REMOTE_MISMATCH
// (409); failures of this host's pool keep their own codes.
import { isAbortError } from '../common/abort.js';
import type { ObjectSink } from '../pools/pool.js';
import type { NbdClientTls } from '../remote/nbd-client.js';
import { NbdClient } from '../remote/nbd-client.js';
import { NbdExportNotFoundError } from '../remote/nbd-errors.js';
import type { NbdUri } from '../remote/nbd-uri.js';
import { formatNbdUri, parseNbdUri } from '../remote/nbd-uri.js';
import type { PullResult } from '../remote/pull.js';
import { pullExtents } from '../remote/pull.js';
import { DomainError } from './errors.js';

/** A volume of another host, as the control plane names it. */
export interface RemoteSource {
  /** The peer's export: `nbds://host:port/EXPORT`, `nbd+unix:///EXPORT?socket=PATH` (another agent on this host), or `nbd://` where plaintext_tcp allows. */
  uri: string;
  /** The source's size in bytes: the export must be exactly this. */
  sizeBytes: number;
  /** The peer's volume id: when given, the export must say it serves that volume. */
  volume?: string;
}

export interface RemoteSourcesOptions {
  /** This host's `[nbd] tls`, as a client: required for `nbds` URIs. */
  tls?: NbdClientTls;
  /** `[nbd] plaintext_tcp`: `nbd://` over TCP is allowed. */
  plaintextTcp: boolean;
  handshakeTimeoutMs?: number;
  /** Reads in flight while pulling; default the pull's own. */
  queueDepth?: number;
}

/** The description volagent's exports carry (exports.ts): `volagent volume <id>`. */
const PEER_DESCRIPTION = /^volagent volume (\S+)$/;

export interface PullProgress {
  (copiedBytes: number, dataBytesKnownSoFar: number): void;
}

/** An open connection to a checked source export. */
export interface OpenedRemote {
  readonly sizeBytes: number;
  /** Copies the data extents into `sink`; failures of the peer are REMOTE_FAILED, of the sink its own. */
  copyInto(sink: ObjectSink, options: { signal?: AbortSignal; onProgress?: PullProgress }): Promise<PullResult>;
  close(): Promise<void>;
}

function remoteFailed(uri: string, error: unknown): DomainError {
  const code = (error as { code?: unknown }).code;
  const message = error instanceof Error ? error.message : String(error);
  // The client's own messages name the URI already.
  const said = message.startsWith(`${uri}: `) ? message.slice(uri.length + 2) : message;
  return new DomainError('REMOTE_FAILED', `the source export ${uri}: ${said}; nothing was kept`, {
    uri, ...(typeof code === 'string' ? { cause: code } : {}),
  });
}

export class RemoteSources {
  constructor(private readonly options: RemoteSourcesOptions) {}

  /** The URI, checked against this agent's rules before anything is recorded (BAD_REQUEST). Credentials never ride in the URI. */
  check(source: RemoteSource): NbdUri {
    let uri: NbdUri;
    try {
      uri = parseNbdUri(source.uri);
    } catch (error) {
      throw new DomainError('BAD_REQUEST', `source.remote.uri: ${(error as Error).message}`, { field: 'source.remote.uri' });
    }
    if (uri.tls && !this.options.tls) {
      throw new DomainError('BAD_REQUEST', 'source.remote.uri is nbds:// but this agent has no [nbd] tls credentials to present', { field: 'source.remote.uri' });
    }
    if (!uri.tls && uri.transport === 'tcp' && !this.options.plaintextTcp) {
      throw new DomainError('BAD_REQUEST', 'source.remote.uri is nbd:// over TCP: a peer is read over TLS (nbds://) unless [nbd] plaintext_tcp = true', { field: 'source.remote.uri' });
    }
    const authority = /^[a-z+]+:\/\/([^/?#]*)/.exec(source.uri)?.[1] ?? '';
    if (authority.includes('@') || /[?&]tls-/.test(source.uri)) {
      throw new DomainError('BAD_REQUEST', 'source.remote.uri carries credentials or TLS settings: this agent uses its own [nbd] tls', { field: 'source.remote.uri' });
    }
    return uri;
  }

  /** Connects and checks the export is the one named; REMOTE_FAILED when it cannot be read, REMOTE_MISMATCH when it is another. */
  async open(source: RemoteSource, signal?: AbortSignal): Promise<OpenedRemote> {
    const uri = this.check(source);
    const label = formatNbdUri(uri);
    let client: NbdClient;
    try {
      client = await NbdClient.connect(uri, {
        ...(uri.tls && this.options.tls ? { tls: this.options.tls } : {}),
        ...(signal ? { signal } : {}),
        ...(this.options.handshakeTimeoutMs !== undefined ? { handshakeTimeoutMs: this.options.handshakeTimeoutMs } : {}),
      });
    } catch (error) {
      if (isAbortError(error)) throw error;
      if (error instanceof NbdExportNotFoundError) {
        throw new DomainError('REMOTE_MISMATCH', `the source export ${label} does not exist (removed, or never made); nothing was kept`, { uri: label });
      }
      throw remoteFailed(label, error);
    }
    try {
      if (client.sizeBytes !== source.sizeBytes) {
        throw new DomainError('REMOTE_MISMATCH', `the source export ${label} is ${client.sizeBytes} bytes, not the ${source.sizeBytes} named; nothing was kept`, {
          uri: label, sizeBytes: client.sizeBytes, expectedSizeBytes: source.sizeBytes,
        });
      }
      if (source.volume !== undefined) {
        const served = PEER_DESCRIPTION.exec(client.description ?? '')?.[1];
        if (served !== source.volume) {
          throw new DomainError('REMOTE_MISMATCH', `the source export ${label} serves ${served === undefined ? 'no volagent volume' : `volume ${served}`}, not ${source.volume}; nothing was kept`, {
            uri: label, volume: served ?? null, expectedVolume: source.volume,
          });
        }
      }
    } catch (error) {
      await client.close().catch(() => undefined);
      throw error;
    }
    return {
      sizeBytes: client.sizeBytes,
      copyInto: async (sink, options) => {
        // Whatever the sink (this host's pool) throws keeps its own meaning; the rest is the peer's.
        const sinkFailures = new WeakSet<object>();
        const guarded: ObjectSink = {
          write: (data, offset) => sink.write(data, offset).catch((error: unknown) => {
            if (typeof error === 'object' && error !== null) sinkFailures.add(error);
            throw error;
          }),
        };
        try {
          return await pullExtents(client, guarded, {
            ...(options.signal ? { signal: options.signal } : {}),
            ...(options.onProgress ? { onProgress: options.onProgress } : {}),
            ...(this.options.queueDepth !== undefined ? { queueDepth: this.options.queueDepth } : {}),
          });
        } catch (error) {
          if (isAbortError(error) || (typeof error === 'object' && error !== null && sinkFailures.has(error))) throw error;
          throw remoteFailed(label, error);
        }
      },
      close: () => client.close(),
    };
  }
}
