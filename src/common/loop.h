/*
 * One thread's event loop for the C daemons: file descriptors watched with
 * epoll, timers, and work that must not run on the loop (a program to wait
 * for, a namespace to enter) handed to a small pool of worker threads whose
 * completions come back to the loop.
 *
 * Every callback runs on the loop's thread. Objects embed their hp_watch,
 * hp_timer and hp_job and are reached from them with container_of. An object
 * may stop its watch, its timers, and free itself inside any callback: the
 * loop forgets events still pending for a watch that was stopped.
 *
 * Functions return a negative errno on failure.
 */
#ifndef HETEROPOD_COMMON_LOOP_H
#define HETEROPOD_COMMON_LOOP_H

#include <stddef.h>
#include <stdint.h>

#ifndef container_of
#define container_of(ptr, type, member) ((type *)(void *)((char *)(ptr) - offsetof(type, member)))
#endif

struct hp_loop;

/* A file descriptor watched for EPOLLIN / EPOLLOUT (EPOLLHUP and EPOLLERR always). */
struct hp_watch {
	int fd;
	uint32_t events; /* as registered; 0: not watched */
	void (*fn)(struct hp_watch *w, uint32_t events);
};

struct hp_timer {
	long long due; /* hp_now_ms() */
	void (*fn)(struct hp_timer *t);
	struct hp_timer *prev, *next;
	int armed;
};

/* `run` on a worker thread, then `done` on the loop's thread. */
struct hp_job {
	void (*run)(struct hp_job *j);
	void (*done)(struct hp_job *j);
	struct hp_job *next;
};

long long hp_now_ms(void);

int hp_loop_new(struct hp_loop **out);
/* Stops the workers (after the job each runs) and frees the loop; watches and timers are the caller's. */
void hp_loop_free(struct hp_loop *l);

/* Runs until hp_loop_stop; returns 0 then, or a negative errno if epoll fails. */
int hp_loop_run(struct hp_loop *l);
void hp_loop_stop(struct hp_loop *l);
/* One turn: waits for events up to timeout_ms (or the next timer), dispatches them and the due timers. */
int hp_loop_run_once(struct hp_loop *l, int timeout_ms);

/* Starts watching fd (events: EPOLLIN, EPOLLOUT or both). */
int hp_watch_start(struct hp_loop *l, struct hp_watch *w, int fd, uint32_t events, void (*fn)(struct hp_watch *, uint32_t));
/* Changes what a watched fd is watched for (no system call when unchanged). */
int hp_watch_set(struct hp_loop *l, struct hp_watch *w, uint32_t events);
/* Stops watching; the fd is the caller's to close (after this). */
void hp_watch_stop(struct hp_loop *l, struct hp_watch *w);

/* Arms t to fire once, ms from now (0: on the loop's next turn); re-arming moves it. */
void hp_timer_start(struct hp_loop *l, struct hp_timer *t, long long ms, void (*fn)(struct hp_timer *));
void hp_timer_stop(struct hp_loop *l, struct hp_timer *t);

/* Queues j for a worker thread (started on first use, HP_LOOP_WORKERS of them). */
int hp_job_submit(struct hp_loop *l, struct hp_job *j);

#define HP_LOOP_WORKERS 4

#endif
