/* SHA-256 (FIPS 180-4), the project's one: libxpu's (a pod's tag in chain names;
 * not exported from the library), and compiled into the C programs that need it
 * (the shim's socket names, the node daemon's layer index and fingerprints). libcrypto is not linked on purpose: the library is loaded into
 * Node, whose binary exports OpenSSL symbols of its own. */
#ifndef XPU_SHA256_H
#define XPU_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define XPU_SHA256_BYTES 32

/* The digest of len bytes at data. */
void xpu_sha256(const void *data, size_t len, uint8_t out[XPU_SHA256_BYTES]);

#endif
