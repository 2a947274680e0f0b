/*
 * The `config` action of containerd-shim-heteropod-v2 alone (src/shim/shim-config.c),
 * built under AddressSanitizer and UBSan: test/unit/shim-config.test.ts runs every
 * case through it as well as through the shim. Usage: shim-test-config-asan PATH.
 */
#include "shim-config.h"

int main(int argc, char **argv)
{
	return shim_config_main(argc > 1 ? argv[1] : "");
}
