/*
 * heteropod-noded: the node daemon in C (noded.h).
 *
 *   heteropod-noded [--config FILE] [--socket PATH]
 *
 * Serves until SIGTERM or SIGINT, then leaves each pod's record for the next
 * daemon and exits 0; exits 1 when it cannot start (the reason on stderr).
 */
#include "noded.h"

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
	static struct nd_daemon d; /* lives until the process ends */
	const char *config = NULL, *socket = NULL;
	char err[SHIM_CONFIG_ERROR_MAX];
	int r;

	for (int i = 1; i < argc; i++) {
		if (i + 1 < argc && strcmp(argv[i], "--config") == 0) {
			config = argv[++i];
		} else if (i + 1 < argc && strcmp(argv[i], "--socket") == 0) {
			socket = argv[++i];
		} else {
			fprintf(stderr, "heteropod-noded: unknown argument %s\nusage: heteropod-noded [--config FILE] [--socket PATH]\n", argv[i]);
			return 2;
		}
	}
	if (nd_daemon_start(&d, config, socket, err, sizeof(err)) < 0) {
		fprintf(stderr, "heteropod-noded: %s\n", err);
		return 1;
	}
	r = hp_loop_run(d.loop);
	nd_daemon_stop(&d);
	return r < 0 ? 1 : 0;
}
