// Unix sockets as the shim, its proxy's peers and the tests look at them.
import * as net from 'node:net';

/**
 * Whether something accepts connections on a shim socket, given as a path or as a
 * `unix://` address (an empty address never answers). This is how `delete` finds a
 * pod's shim dead, and the test bed its node daemon up.
 */
export function socketAnswers(socketOrAddress: string): Promise<boolean> {
  const socketPath = socketOrAddress.replace(/^unix:\/\//, '');
  if (!socketPath) return Promise.resolve(false);
  return new Promise((resolve) => {
    const s = net.connect(socketPath);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}
