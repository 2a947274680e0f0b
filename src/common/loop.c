/*
 * The C daemons' event loop (loop.h): epoll, a sorted list of timers (a
 * daemon holds tens of them, not thousands), and a worker pool whose finished
 * jobs come back through an eventfd.
 */
#include "loop.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64

struct hp_loop {
	int epfd;
	int stop;
	/* The batch epoll_wait returned, while it is being dispatched: a watch
	 * stopped meanwhile has its pending entries cleared. */
	struct epoll_event *batch;
	int batch_len;
	struct hp_timer timers; /* sentinel of the list, sorted by due */
	/* Workers: `queue` waits for them, `finished` for the loop (eventfd `wake`). */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct hp_job *queue, **queue_tail;
	struct hp_job *finished;
	pthread_t threads[HP_LOOP_WORKERS];
	int nthreads;
	int quit;
	struct hp_watch wake;
};

long long hp_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void wake_event(struct hp_watch *w, uint32_t events);

int hp_loop_new(struct hp_loop **out)
{
	struct hp_loop *l = calloc(1, sizeof(*l));
	int fd;

	if (!l)
		return -ENOMEM;
	l->timers.prev = l->timers.next = &l->timers;
	l->queue_tail = &l->queue;
	pthread_mutex_init(&l->mu, NULL);
	pthread_cond_init(&l->cv, NULL);
	l->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (l->epfd < 0)
		goto fail;
	fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (fd < 0)
		goto fail;
	if (hp_watch_start(l, &l->wake, fd, EPOLLIN, wake_event) < 0) {
		close(fd);
		goto fail;
	}
	*out = l;
	return 0;
fail:;
	int r = -errno;

	if (l->epfd >= 0)
		close(l->epfd);
	free(l);
	return r;
}

void hp_loop_free(struct hp_loop *l)
{
	if (!l)
		return;
	pthread_mutex_lock(&l->mu);
	l->quit = 1;
	pthread_cond_broadcast(&l->cv);
	pthread_mutex_unlock(&l->mu);
	for (int i = 0; i < l->nthreads; i++)
		pthread_join(l->threads[i], NULL);
	close(l->wake.fd);
	close(l->epfd);
	pthread_mutex_destroy(&l->mu);
	pthread_cond_destroy(&l->cv);
	free(l);
}

void hp_loop_stop(struct hp_loop *l)
{
	l->stop = 1;
}

int hp_watch_start(struct hp_loop *l, struct hp_watch *w, int fd, uint32_t events, void (*fn)(struct hp_watch *, uint32_t))
{
	struct epoll_event ev = { .events = events, .data.ptr = w };

	w->fd = fd;
	w->fn = fn;
	if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
		return -errno;
	/* Never 0 while watched, so that hp_watch_stop knows it is. */
	w->events = events | EPOLLHUP;
	return 0;
}

int hp_watch_set(struct hp_loop *l, struct hp_watch *w, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.ptr = w };

	if ((events | EPOLLHUP) == w->events)
		return 0;
	if (epoll_ctl(l->epfd, EPOLL_CTL_MOD, w->fd, &ev) < 0)
		return -errno;
	w->events = events | EPOLLHUP;
	return 0;
}

void hp_watch_stop(struct hp_loop *l, struct hp_watch *w)
{
	if (!w->events)
		return;
	epoll_ctl(l->epfd, EPOLL_CTL_DEL, w->fd, NULL);
	w->events = 0;
	for (int i = 0; i < l->batch_len; i++)
		if (l->batch[i].data.ptr == w)
			l->batch[i].data.ptr = NULL;
}

void hp_timer_stop(struct hp_loop *l, struct hp_timer *t)
{
	(void)l;
	if (!t->armed)
		return;
	t->prev->next = t->next;
	t->next->prev = t->prev;
	t->armed = 0;
}

void hp_timer_start(struct hp_loop *l, struct hp_timer *t, long long ms, void (*fn)(struct hp_timer *))
{
	struct hp_timer *at;

	hp_timer_stop(l, t);
	t->due = hp_now_ms() + ms;
	t->fn = fn;
	/* After every timer due no later: timers due together fire in the order set. */
	for (at = l->timers.prev; at != &l->timers && at->due > t->due; at = at->prev)
		;
	t->prev = at;
	t->next = at->next;
	at->next->prev = t;
	at->next = t;
	t->armed = 1;
}

/* Milliseconds until the first timer is due: -1 without one. */
static int next_timeout(struct hp_loop *l)
{
	long long left;

	if (l->timers.next == &l->timers)
		return -1;
	left = l->timers.next->due - hp_now_ms();
	return left <= 0 ? 0 : left > 60000 ? 60000 : (int)left;
}

static void run_timers(struct hp_loop *l)
{
	long long now = hp_now_ms();

	/* The head is taken each time: a callback may stop or set any timer. */
	while (!l->stop && l->timers.next != &l->timers && l->timers.next->due <= now) {
		struct hp_timer *t = l->timers.next;

		hp_timer_stop(l, t);
		t->fn(t);
	}
}

static void *worker(void *arg)
{
	struct hp_loop *l = arg;
	uint64_t one = 1;

	pthread_mutex_lock(&l->mu);
	for (;;) {
		struct hp_job *j;

		while (!l->queue && !l->quit)
			pthread_cond_wait(&l->cv, &l->mu);
		if (l->quit)
			break;
		j = l->queue;
		l->queue = j->next;
		if (!l->queue)
			l->queue_tail = &l->queue;
		pthread_mutex_unlock(&l->mu);
		j->run(j);
		pthread_mutex_lock(&l->mu);
		j->next = l->finished;
		l->finished = j;
		/* The mutex orders the job's writes before the loop takes it from `finished`. */
		if (write(l->wake.fd, &one, sizeof(one)) < 0) {
			/* the counter cannot overflow here; nothing to do */
		}
	}
	pthread_mutex_unlock(&l->mu);
	return NULL;
}

int hp_job_submit(struct hp_loop *l, struct hp_job *j)
{
	int r = 0;

	pthread_mutex_lock(&l->mu);
	if (l->nthreads < HP_LOOP_WORKERS && (l->queue || l->nthreads == 0)) {
		r = -pthread_create(&l->threads[l->nthreads], NULL, worker, l);
		if (r == 0)
			l->nthreads++;
		else if (l->nthreads > 0)
			r = 0; /* the workers there will take it */
	}
	if (r == 0) {
		j->next = NULL;
		*l->queue_tail = j;
		l->queue_tail = &j->next;
		pthread_cond_signal(&l->cv);
	}
	pthread_mutex_unlock(&l->mu);
	return r;
}

static void wake_event(struct hp_watch *w, uint32_t events)
{
	struct hp_loop *l = container_of(w, struct hp_loop, wake);
	struct hp_job *done, *next, *ordered = NULL;
	uint64_t n;

	(void)events;
	if (read(w->fd, &n, sizeof(n)) < 0) {
		/* EAGAIN: a wake-up already read */
	}
	pthread_mutex_lock(&l->mu);
	done = l->finished;
	l->finished = NULL;
	pthread_mutex_unlock(&l->mu);
	/* In the order they finished. */
	for (; done; done = next) {
		next = done->next;
		done->next = ordered;
		ordered = done;
	}
	for (; ordered; ordered = next) {
		next = ordered->next;
		ordered->done(ordered);
	}
}

static int turn(struct hp_loop *l, int timeout_ms)
{
	struct epoll_event events[BATCH];
	int n = epoll_wait(l->epfd, events, BATCH, timeout_ms);

	if (n < 0)
		return errno == EINTR ? 0 : -errno;
	l->batch = events;
	l->batch_len = n;
	for (int i = 0; i < n && !l->stop; i++) {
		struct hp_watch *w = events[i].data.ptr;

		if (w)
			w->fn(w, events[i].events);
	}
	l->batch_len = 0;
	run_timers(l);
	return 0;
}

int hp_loop_run_once(struct hp_loop *l, int timeout_ms)
{
	int t = next_timeout(l), r;

	r = turn(l, t >= 0 && t < timeout_ms ? t : timeout_ms);
	l->stop = 0;
	return r;
}

/* A stop asked before it runs (a callback called before the loop started) ends it at once. */
int hp_loop_run(struct hp_loop *l)
{
	int r = 0;

	while (!l->stop && r == 0)
		r = turn(l, next_timeout(l));
	l->stop = 0;
	return r;
}
