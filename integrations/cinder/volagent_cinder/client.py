"""The agent's control API (docs/api.md) over its unix socket.

Standard library only: one HTTP/1.1 request per connection, JSON bodies.
Errors come back as AgentError (the agent answered with an error body) or
AgentUnreachable (no answer: the socket is missing, refuses, or the
connection broke or timed out).
"""

import http.client
import json
import socket
import time
import urllib.parse


class AgentError(Exception):
    """The agent answered ``{"error": {code, message, details}}``."""

    def __init__(self, status, code, message, details=None):
        super().__init__('%s (%s): %s' % (code, status, message))
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}


class AgentUnreachable(Exception):
    """No answer from the agent's socket."""

    def __init__(self, socket_path, cause):
        super().__init__('volagent at %s is unreachable: %s' % (socket_path, cause))
        self.socket_path = socket_path
        self.cause = cause


class OperationTimeout(Exception):
    """An operation did not end within the bound; it was cancelled."""

    def __init__(self, operation, seconds, cancelled):
        super().__init__('operation %s (%s %s) did not end within %d s; %s' % (
            operation['id'], operation.get('kind'), operation.get('target'), seconds,
            'it was cancelled and left nothing behind' if cancelled else 'cancelling it failed'))
        self.operation = operation


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path, timeout):
        super().__init__('volagent', timeout=timeout)
        self.socket_path = socket_path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class AgentClient(object):
    """A client of one agent; ``timeout`` bounds each request (seconds)."""

    def __init__(self, socket_path, timeout=60):
        self.socket_path = socket_path
        self.timeout = timeout

    def request(self, method, path, body=None, query=None, timeout=None):
        """Returns ``(status, decoded JSON or None)``; raises AgentError for a 4xx/5xx."""
        if query:
            path += '?' + urllib.parse.urlencode(
                {k: v for k, v in query.items() if v is not None})
        headers = {'Accept': 'application/json'}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode('utf-8')
            headers['Content-Type'] = 'application/json'
        conn = _UnixHTTPConnection(self.socket_path, timeout or self.timeout)
        try:
            try:
                conn.request(method, path, body=payload, headers=headers)
                response = conn.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException) as e:
                raise AgentUnreachable(self.socket_path, e) from e
        finally:
            conn.close()
        decoded = json.loads(raw) if raw else None
        if response.status >= 400:
            error = (decoded or {}).get('error') if isinstance(decoded, dict) else None
            if not error:
                raise AgentError(response.status, 'HTTP_%d' % response.status,
                                 raw.decode('utf-8', 'replace')[:200])
            raise AgentError(response.status, error.get('code'), error.get('message'),
                             error.get('details'))
        return response.status, decoded

    def get(self, path, query=None):
        return self.request('GET', path, query=query)[1]

    def wait_operation(self, operation, seconds):
        """Waits until ``operation`` ends, at most ``seconds``; past that it is cancelled.

        Returns the ended operation when it succeeded; raises AgentError with
        its error when it failed or was cancelled, OperationTimeout on the bound.
        """
        deadline = time.monotonic() + seconds
        ended = operation if operation['state'] != 'running' else None
        while ended is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                cancelled = True
                try:
                    self.request('DELETE', '/v1/operations/%s' % operation['id'])
                except (AgentError, AgentUnreachable):
                    cancelled = False
                raise OperationTimeout(operation, seconds, cancelled)
            try:
                # The agent answers when the operation ends; the socket
                # timeout bounds the wait, and the loop re-checks the deadline.
                ended = self.request('GET', '/v1/operations/%s' % operation['id'],
                                     query={'wait': 'true'},
                                     timeout=max(1, min(remaining, 60)))[1]
            except AgentUnreachable as e:
                if not isinstance(e.cause, socket.timeout):
                    raise
        if ended['state'] == 'succeeded':
            return ended
        error = ended.get('error') or {}
        raise AgentError(409 if ended['state'] == 'cancelled' else 500,
                         error.get('code', 'OPERATION_%s' % ended['state'].upper()),
                         error.get('message', 'operation %s %s' % (ended['id'], ended['state'])),
                         {'operation': ended['id']})
