// An address the NBD server listens on (`[nbd].listen`, read by
// src/daemon/config.ts from "unix:/path" and "tcp:host:port"): a unix socket
// by its filesystem path (never abstract), or TCP by host and port (port 0:
// the kernel chooses one).
export type ListenAddress = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };
