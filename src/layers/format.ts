// The contract between the shim, which packs a snapshot directory into a tar
// stream (src/shim/layers.ts), and the agent, which unpacks it into its layer
// cache (src/agent/layer-cache.ts). The stream is a plain ustar/pax tar of an
// overlayfs layer *as it lies on disk*, not an OCI layer: a whiteout is the
// character device 0:0 it is on disk, and an opaque directory carries its
// trusted.overlay.opaque attribute as a pax record. So the agent's copy can be
// used as an overlay lowerdir exactly as the host's snapshot is.
//
// Names: the layer root is "./"; everything else is relative, without "./" or a
// trailing slash, and a directory precedes its contents. A layer is named by
// "sha256:<hex>" of its whole tar stream.

/** The only digest algorithm accepted; the hex is lower case, as OCI writes it. */
export const DIGEST_PATTERN = /^sha256:([0-9a-f]{64})$/;

/** The attribute that marks an overlay directory opaque (hides the lower layers' contents). */
export const OPAQUE_XATTR = 'trusted.overlay.opaque';

/** The pax record that carries OPAQUE_XATTR (the SCHILY.xattr. form GNU tar and Go's archive/tar use). */
export const OPAQUE_PAX_KEY = `SCHILY.xattr.${OPAQUE_XATTR}`;

/** The name of the layer root's own entry (its mode, owner and mtime). */
export const ROOT_ENTRY_NAME = './';

