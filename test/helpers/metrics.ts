/** Scraping a slacker-ts metrics listener on a unix socket, as Prometheus would. */
import { request } from 'node:http';

export function scrape(socketPath: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path: '/metrics', method: 'GET' }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => (res.statusCode === 200 ? resolve(text) : reject(new Error(`metrics: ${res.statusCode}`))));
    });
    req.on('error', reject);
    req.end();
  });
}

/** The value of one sample (`name{labels}` exactly as exposed, or a bare name); NaN if absent. */
export function sample(text: string, name: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.slice(name.length + 1)) : NaN;
}
