/*
 * The sandbox ("pause") process of a pod: holds the pod's namespaces open, reaps
 * zombies of processes that joined its pid namespace, and exits on SIGINT/SIGTERM.
 * Built statically so the pause image needs no shared libraries.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_terminate(int sig)
{
	(void)sig;
	_exit(0);
}

static void on_child(int sig)
{
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

int main(int argc, char **argv)
{
	struct sigaction sa_term = { .sa_handler = on_terminate };
	struct sigaction sa_chld = { .sa_handler = on_child, .sa_flags = SA_NOCLDSTOP };

	if (argc > 1 && argv[1][0] == '-' && argv[1][1] == 'v') {
		puts("heteropod-pause 1");
		return 0;
	}
	if (sigaction(SIGINT, &sa_term, NULL) < 0 || sigaction(SIGTERM, &sa_term, NULL) < 0 ||
	    sigaction(SIGCHLD, &sa_chld, NULL) < 0) {
		perror("heteropod-pause: sigaction");
		return 1;
	}
	for (;;)
		pause();
}
