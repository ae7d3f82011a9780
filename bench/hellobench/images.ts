/**
 * The HelloBench-like image set, built locally from Debian packages (there is no Docker Hub
 * here). HelloBench's categories and readiness rules: distro and language images are ready
 * when their hello run exits; databases and most servers when a fixed log line appears; web
 * servers and frameworks at their first HTTP response (polled every 10 ms).
 */
export type Ready = { kind: 'exit'; output: string } | { kind: 'log'; line: string } | { kind: 'http'; port: number };

export interface ImageSpec {
  name: string;
  category: 'distro' | 'language' | 'database' | 'web-server' | 'web-framework' | 'other';
  /** 'busybox': a static busybox alone; 'debian': debootstrap minbase plus these packages. */
  base: 'busybox' | 'debian';
  packages?: string[];
  /** Files written into the image (path -> content). */
  files?: Record<string, string>;
  cmd: string[];
  ready: Ready;
  /** Runs with the host network (HTTP readiness); the rest run with none. */
  hostNetwork?: boolean;
}

const HELLO_C = '#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n';
const HELLO_JAVA = 'public class Hello { public static void main(String[] a) { System.out.println("hello"); } }\n';
const FLASK_APP =
  'from flask import Flask\napp = Flask(__name__)\n@app.route("/")\ndef hello():\n    return "hello"\n' +
  'app.run(host="127.0.0.1", port=18081)\n';

export const IMAGES: ImageSpec[] = [
  {
    name: 'busybox',
    category: 'distro',
    base: 'busybox',
    cmd: ['echo', 'hello'],
    ready: { kind: 'exit', output: 'hello' },
  },
  {
    name: 'debian',
    category: 'distro',
    base: 'debian',
    cmd: ['echo', 'hello'],
    ready: { kind: 'exit', output: 'hello' },
  },
  {
    name: 'python3',
    category: 'language',
    base: 'debian',
    packages: ['python3'],
    cmd: ['python3', '-c', 'print("hello")'],
    ready: { kind: 'exit', output: 'hello' },
  },
  {
    name: 'perl',
    category: 'language',
    base: 'debian',
    packages: ['perl'],
    cmd: ['perl', '-e', 'print "hello\\n"'],
    ready: { kind: 'exit', output: 'hello' },
  },
  {
    name: 'ruby',
    category: 'language',
    base: 'debian',
    packages: ['ruby'],
    cmd: ['ruby', '-e', 'puts "hello"'],
    ready: { kind: 'exit', output: 'hello' },
  },
  {
    name: 'gcc',
    category: 'language',
    base: 'debian',
    packages: ['gcc', 'libc6-dev'],
    files: { '/src/hello.c': HELLO_C },
    cmd: ['sh', '-c', 'gcc -o /tmp/hello /src/hello.c && /tmp/hello'],
    ready: { kind: 'exit', output: 'hello' },
  },
  {
    name: 'java',
    category: 'language',
    base: 'debian',
    packages: ['openjdk-17-jdk-headless'],
    files: { '/src/Hello.java': HELLO_JAVA },
    cmd: ['sh', '-c', 'cd /tmp && javac -d . /src/Hello.java && java -cp . Hello'],
    ready: { kind: 'exit', output: 'hello' },
  },
  {
    name: 'redis',
    category: 'database',
    base: 'debian',
    packages: ['redis-server'],
    cmd: ['redis-server', '--port', '16379', '--protected-mode', 'no'],
    ready: { kind: 'log', line: 'Ready to accept connections' },
  },
  {
    name: 'postgres',
    category: 'database',
    base: 'debian',
    packages: ['postgresql'],
    cmd: [
      'sh',
      '-c',
      'mkdir -p /tmp/pg && chown postgres /tmp/pg && su postgres -s /bin/sh -c ' +
        '"/usr/lib/postgresql/15/bin/initdb -D /tmp/pg >/dev/null && exec /usr/lib/postgresql/15/bin/postgres -D /tmp/pg -p 15432 -k /tmp"',
    ],
    ready: { kind: 'log', line: 'database system is ready to accept connections' },
  },
  {
    name: 'nginx',
    category: 'web-server',
    base: 'debian',
    packages: ['nginx-light'],
    files: {
      '/etc/nginx/sites-enabled/default': 'server { listen 127.0.0.1:18080; root /var/www/html; }\n',
      '/var/www/html/index.html': 'hello\n',
    },
    cmd: ['nginx', '-g', 'daemon off;'],
    ready: { kind: 'http', port: 18080 },
    hostNetwork: true,
  },
  {
    name: 'flask',
    category: 'web-framework',
    base: 'debian',
    packages: ['python3-flask'],
    files: { '/app/app.py': FLASK_APP },
    cmd: ['python3', '/app/app.py'],
    ready: { kind: 'http', port: 18081 },
    hostNetwork: true,
  },
  {
    name: 'registry',
    category: 'other',
    base: 'debian',
    packages: ['docker-registry'],
    files: {
      '/etc/registry.yml':
        'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /tmp/registry\nhttp:\n  addr: 127.0.0.1:15000\n',
    },
    cmd: ['docker-registry', 'serve', '/etc/registry.yml'],
    ready: { kind: 'http', port: 15000 },
    hostNetwork: true,
  },
];

/** --quick: one image per kind of readiness that is cheap to build. */
export const QUICK = ['busybox', 'debian', 'python3'];
