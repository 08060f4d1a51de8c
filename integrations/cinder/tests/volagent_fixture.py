"""A real volagentd for the driver's tests, and a raw client of its API.

``Agent`` writes an agent config into a temporary directory named
``pytests-*`` under /tmp, with file pools in plain directories there or on
loop filesystems it makes (XFS: reflink; ext4: copy), starts
``node <repo>/bin/volagentd.js --config ...`` and waits for its socket. ``stop``
removes the agent's exports, stops the agent by its pid, detaches every loop
device backed by a file in the directory, unmounts what it mounted and
removes the directory; it runs also when start-up fails half-way.

The agent's repository is ``$VOLAGENT_REPO``, by default the one holding
these tests; its ``dist/`` must be built (``npx tsc -p tsconfig.json``).
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

from volagent_cinder import client as agent_client

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.environ.get('VOLAGENT_REPO') or
                       os.path.join(HERE, '..', '..', '..'))
GiB = 1024 ** 3


def _run(*argv):
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True).stdout.strip()


def lvm_pool(kind):
    """``(VG, THIN_POOL)`` of a pool kind ``lvm:VG/THIN_POOL``; None for other kinds."""
    if not kind.startswith('lvm:'):
        return None
    vg, _, thin_pool = kind[len('lvm:'):].partition('/')
    return vg, thin_pool


class Agent(object):
    """One volagentd with pools ``{name: kind}`` (in order).

    A kind is ``dir`` (a directory in the agent's /tmp directory), ``xfs`` or
    ``ext4`` (a loop filesystem of its own), ``xfs@POOL`` (a directory on
    the filesystem of the earlier pool POOL), or ``lvm:VG/THIN_POOL`` (an
    ``lvm`` pool in an existing VG's thin pool, which the caller made: a
    kernel with device-mapper, as in the VM lane's test/vm/lvm-driver.test.ts).

    ``env`` is added to the agent's environment; ``lock_wait_ms`` is its
    ``[agent] lock_wait_ms``. With ``tls_tcp`` the agent also serves NBD on
    ``tcp:127.0.0.1:<port>`` with TLS, its PSK file ``nbd.psk`` in its
    directory (identity ``pytests``).
    """

    def __init__(self, pools, env=None, lock_wait_ms=None, label='agent', tls_tcp=False):
        self.tls_tcp = tls_tcp
        self.pools = pools
        self.env = env or {}
        self.lock_wait_ms = lock_wait_ms
        self.label = label
        self.root = None
        self.process = None
        self.mounts = []
        self.pool_paths = {}
        self.filesystems = {}

    @property
    def socket(self):
        return os.path.join(self.root, 'control.sock')

    @property
    def psk_file(self):
        return os.path.join(self.root, 'nbd.psk')

    def start(self):
        daemon = os.path.join(REPO, 'bin', 'volagentd.js')
        built = os.path.join(REPO, 'dist', 'src', 'cli', 'volagentd.js')
        if not os.path.exists(built):
            raise RuntimeError('%s is missing: build the agent first (npx tsc -p '
                               'tsconfig.json in %s)' % (built, REPO))
        self.root = tempfile.mkdtemp(prefix='pytests-%s-' % self.label, dir='/tmp')
        try:
            self._start(daemon)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, daemon):
        lines = ['[control]', 'socket = %s' % json.dumps(self.socket), '',
                 '[catalog]', 'path = %s' % json.dumps(os.path.join(self.root, 'catalog.db')), '']
        if self.tls_tcp:
            with open(self.psk_file, 'w') as f:
                f.write('pytests:%s\n' % os.urandom(32).hex())
            os.chmod(self.psk_file, 0o600)
            lines += ['[nbd]', 'listen = ["tcp:127.0.0.1:0"]',
                      'tls = { psk_file = %s }' % json.dumps(self.psk_file), '']
        if self.lock_wait_ms is not None:
            lines += ['[agent]', 'lock_wait_ms = %d' % self.lock_wait_ms, '']
        for name, kind in self.pools.items():
            if lvm_pool(kind):
                vg, thin_pool = lvm_pool(kind)
                lines += ['[[pools]]', 'name = %s' % json.dumps(name), 'backend = "lvm"',
                          'vg = %s' % json.dumps(vg), 'thin_pool = %s' % json.dumps(thin_pool), '']
                continue
            path = self._pool_directory(name, kind)
            self.pool_paths[name] = path
            lines += ['[[pools]]', 'name = %s' % json.dumps(name), 'backend = "file"',
                      'path = %s' % json.dumps(path), '']
        config = os.path.join(self.root, 'agent.toml')
        with open(config, 'w') as f:
            f.write('\n'.join(lines))
        self.log = open(os.path.join(self.root, 'agent.log'), 'w')
        # ``{root}`` in a value is the agent's directory (a failpoint's hold file).
        env = dict(os.environ, **{k: v.format(root=self.root) for k, v in self.env.items()})
        self.process = subprocess.Popen(['node', daemon, '--config', config],
                                        stdout=self.log, stderr=subprocess.STDOUT,
                                        env=env, cwd=self.root)
        client = agent_client.AgentClient(self.socket, timeout=5)
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError('volagentd exited with %s at start-up: %s' % (
                    self.process.returncode, self.log_text()))
            try:
                client.get('/v1/version')
                break
            except agent_client.AgentUnreachable:
                if time.monotonic() > deadline:
                    raise RuntimeError('volagentd did not answer on %s within 30 s: %s' % (
                        self.socket, self.log_text()))
                time.sleep(0.05)

    def _pool_directory(self, name, kind):
        if kind == 'dir':
            path = os.path.join(self.root, 'pool-%s' % name)
            os.mkdir(path)
            return path
        fs_type, _, shared = kind.partition('@')
        mountpoint = self.filesystems.get(shared or name)
        if mountpoint is None:
            mountpoint = self._filesystem(name, fs_type)
        path = os.path.join(mountpoint, 'pool-%s' % name)
        os.mkdir(path)
        return path

    def _filesystem(self, name, fs_type):
        """A 4 GiB sparse image on a loop device, formatted and mounted."""
        mountpoint = os.path.join(self.root, 'fs-%s' % name)
        os.mkdir(mountpoint)
        image = mountpoint + '.img'
        with open(image, 'wb') as f:
            f.truncate(4 * GiB)
        device = _run('losetup', '--find', '--show', image)
        self.mounts.append((mountpoint, device))  # released in stop() even if mkfs fails
        if fs_type == 'xfs':
            _run('mkfs.xfs', '-q', '-m', 'reflink=1', '-L', 'pytests', device)
        elif fs_type == 'ext4':
            _run('mkfs.ext4', '-q', '-L', 'pytests', device)
        else:
            raise ValueError('filesystem %s' % fs_type)
        _run('mount', device, mountpoint)
        self.filesystems[name] = mountpoint
        return mountpoint

    def log_text(self):
        with open(os.path.join(self.root, 'agent.log')) as f:
            return f.read()[-4000:]

    def client(self):
        return agent_client.AgentClient(self.socket, timeout=60)

    def object_path(self, pool, name):
        """The file of a volume (``name``) or snapshot (``volume@snapshot``) in a pool.

        In an ``lvm`` pool: the device node of its LV, ``va.<pool>.<name>``
        with ``@`` written ``+a`` and ``_`` written ``+u`` (written out here,
        not taken from the agent, so the tests check that naming).
        """
        if lvm_pool(self.pools[pool]):
            vg = lvm_pool(self.pools[pool])[0]
            encoded = name.replace('@', '+a').replace('_', '+u')
            return '/dev/%s/va.%s.%s' % (vg, pool, encoded)
        return os.path.join(self.pool_paths[pool], 'objects', name + '.raw')

    def stop(self):
        if self.root is None:
            return
        try:
            if self.process is not None and self.process.poll() is None:
                try:
                    client = agent_client.AgentClient(self.socket, timeout=10)
                    for export in client.get('/v1/exports'):
                        client.request('DELETE', '/v1/exports/%s' % export['id'])
                except Exception:
                    pass  # the loop devices are detached below all the same
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(20)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        finally:
            self._release_devices()
            if getattr(self, 'log', None):
                self.log.close()
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def _release_devices(self):
        # Loop devices of block exports: the agent keeps them over a restart.
        listing = subprocess.run(['losetup', '--list', '--noheadings', '--output',
                                  'NAME,BACK-FILE'], stdout=subprocess.PIPE, text=True).stdout
        mounted = {device for _, device in self.mounts}
        for line in listing.splitlines():
            parts = line.split(None, 1)
            if (len(parts) == 2 and parts[0] not in mounted and
                    parts[1].startswith(self.root + '/')):
                subprocess.run(['losetup', '--detach', parts[0]])
        for path, device in reversed(self.mounts):
            subprocess.run(['umount', path], stderr=subprocess.DEVNULL)
            subprocess.run(['losetup', '--detach', device])
        self.mounts = []
