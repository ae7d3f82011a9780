/**
 * Image references as Docker writes them (`HOST[:PORT]/REPO[:TAG|@DIGEST]`), and platforms
 * (`OS/ARCH[/VARIANT]`). The first component names a registry when it has a dot or a port or
 * is `localhost`; otherwise the image is on Docker Hub (`library/` for one-component names).
 */
import { ConfigError } from '../common/errors.js';
import { isDigest } from '../common/digests.js';
import { isRepositoryName, registryBase, type RegistryTarget } from '../stores/registry.js';

export interface ImageRef {
  /** As given, for messages. */
  text: string;
  target: RegistryTarget;
  /** A tag, or a digest (`sha256:...`). */
  reference: string;
  byDigest: boolean;
}

const DOCKER_HUB = 'registry-1.docker.io';

export function parseImageRef(text: string): ImageRef {
  const bad = (why: string): ConfigError =>
    new ConfigError(`bad image reference ${JSON.stringify(text)}: ${why} (want HOST[:PORT]/REPO[:TAG|@DIGEST])`);
  let rest = text;
  let reference = 'latest';
  let byDigest = false;
  const at = rest.indexOf('@');
  if (at >= 0) {
    reference = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!isDigest(reference)) throw bad('the digest is not sha256:<64 hex digits>');
    byDigest = true;
  } else {
    const colon = rest.lastIndexOf(':');
    if (colon > rest.lastIndexOf('/')) {
      reference = rest.slice(colon + 1);
      rest = rest.slice(0, colon);
      if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/.test(reference)) throw bad(`tag ${JSON.stringify(reference)}`);
    }
  }
  const slash = rest.indexOf('/');
  const first = slash < 0 ? '' : rest.slice(0, slash);
  let host: string;
  let repository: string;
  if (first && (first.includes('.') || first.includes(':') || first === 'localhost')) {
    host = first;
    repository = rest.slice(slash + 1);
  } else {
    host = DOCKER_HUB;
    repository = rest.includes('/') ? rest : `library/${rest}`;
  }
  if (!isRepositoryName(repository)) throw bad(`repository ${JSON.stringify(repository)}`);
  // Docker's config.json keys Docker Hub credentials by its index URL.
  const configHost = host === DOCKER_HUB ? 'https://index.docker.io/v1/' : host;
  return { text, target: { base: registryBase(host), host: configHost, repository, label: text }, reference, byDigest };
}

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export function parsePlatform(text: string): Platform {
  const [os, architecture, variant, extra] = text.split('/');
  if (!os || !architecture || extra !== undefined) {
    throw new ConfigError(`bad platform ${JSON.stringify(text)}: want OS/ARCH[/VARIANT], e.g. linux/amd64`);
  }
  return { os, architecture, variant };
}

export function formatPlatform(p: Platform): string {
  return [p.os, p.architecture, p.variant].filter(Boolean).join('/');
}

/** Whether `have` is the platform `want` asks for (no variant asked: any variant). */
export function platformMatches(have: Partial<Platform>, want: Platform): boolean {
  return (
    have.os === want.os &&
    have.architecture === want.architecture &&
    (want.variant === undefined || have.variant === want.variant)
  );
}
