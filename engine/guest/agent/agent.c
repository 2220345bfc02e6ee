/* msb guest agent: entry point, channel reader, frame dispatch and the event loop.
 *
 *   msb-agent                 as PID 1 of the VM's initramfs: boot, then serve the channel
 *   msb-agent --krun          as libkrun's workload: MSB_* from the environment, vsock channel
 *   msb-agent --krun --dry-run   print what --krun would set up from the environment, and exit
 *   msb-agent --serve-stdio   no mounts, serve stdin (read) / stdout (write): gVisor, tests
 *   msb-agent --version       print the compiled-in version
 *
 * The wire contract is docs/protocol.md.
 */
#define _GNU_SOURCE
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct agent g = {.chan_in = -1, .chan_out = -1, .epfd = -1, .sigfd = -1, .devnull = -1, .rw_fd = -1};

/* ---- small utilities shared by the other files ---- */

uint64_t now_ns(int clock)
{
	struct timespec ts;
	clock_gettime(clock, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int64_t mono_ms(void)
{
	return (int64_t)(now_ns(CLOCK_MONOTONIC) / 1000000u);
}

void sleep_ms(unsigned ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

void set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0)
		fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

void bad_frame(uint8_t type, uint32_t id, const char *why)
{
	agent_log("invalid frame type 0x%02x id %u dropped: %s", type, id, why);
}

/* ---- frame dispatch ---- */

static void on_ping(uint32_t id, const uint8_t *body, size_t n)
{
	if (n > MAX_PING) {
		bad_frame(T_PING, id, "PING body larger than 4 KiB");
		return;
	}
	send_frame(T_PONG, id, body, n);
}

static struct boot_times boot_t;
static void send_ready(const struct boot_times *t);

static void on_resume(uint32_t id, struct rd *r)
{
	uint32_t n = 0;
	const uint8_t *params = rd_bytes(r, &n);
	const char *why = rd_end(r);
	if (!why && memchr(params, 0, n))
		why = "NUL byte in the parameters";
	if (why) {
		bad_frame(T_RESUME, id, why);
		return;
	}
	if (!g.held) {
		bad_frame(T_RESUME, id, "the agent is not held (not a template boot)");
		return;
	}
	boot_resume(params, n, &boot_t);
	send_ready(&boot_t);
}

static void handle_frame(const uint8_t *f, uint32_t len)
{
	uint8_t type = f[0];
	uint32_t id = (uint32_t)f[4] << 24 | (uint32_t)f[5] << 16 | (uint32_t)f[6] << 8 | f[7];
	struct rd r;
	rd_init(&r, f + 8, len - 8);
	if (g.held && type != T_IDENTITY && type != T_RESUME && type != T_PING && type != T_SHUTDOWN) {
		/* Nothing runs in a held template: the root may not even be mounted. */
		if (id && (type == T_EXEC || type == T_FILE_READ || type == T_FILE_WRITE || type == T_FILE_STAT ||
			   type == T_FILE_LIST || type == T_METRICS))
			send_result(id, EAGAIN, "the agent is held (a template boot): RESUME it first");
		else
			bad_frame(type, id, "the agent is held (a template boot)");
		return;
	}
	switch (type) {
	case T_EXEC:
	case T_FILE_READ:
	case T_FILE_WRITE:
		/* These open a stream of answers keyed by id; 0 is reserved for unsolicited frames. */
		if (id == 0) {
			bad_frame(type, id, "request id 0");
			return;
		}
		if (type == T_EXEC)
			exec_on_frame(type, id, &r);
		else
			files_on_frame(type, id, &r);
		return;
	case T_STDIN:
	case T_STDIN_EOF:
	case T_RESIZE:
	case T_SIGNAL:
	case T_ACK:
		exec_on_frame(type, id, &r);
		return;
	case T_FILE_DATA:
	case T_FILE_CLOSE:
	case T_FILE_STAT:
	case T_FILE_LIST:
		files_on_frame(type, id, &r);
		return;
	case T_METRICS:
		if (rd_end(&r))
			bad_frame(type, id, rd_end(&r));
		else
			metrics_send(id);
		return;
	case T_SHUTDOWN:
		if (rd_end(&r))
			bad_frame(type, id, rd_end(&r));
		else
			shutdown_now();
		return;
	case T_PING:
		on_ping(id, r.p, r.len);
		return;
	case T_IDENTITY:
		identity_on_frame(id, &r);
		return;
	case T_RESUME:
		on_resume(id, &r);
		return;
	default:
		bad_frame(type, id, "unknown type");
	}
}

/* ---- channel reader ---- */

/* Room for the largest legal frame plus one more read. */
static uint8_t rbuf[4 + 8 + MAX_BODY + CHUNK];
static size_t rlen;
static uint64_t skip; /* bytes of an oversized frame still to discard */

/* A bad length cannot be trusted to resynchronise, but the host is trusted and PID 1 must
 * survive: log, then drop `len` bytes as if they were that frame. */
static size_t parse_frames(void)
{
	size_t off = 0;
	for (;;) {
		if (skip) {
			size_t k = rlen - off < skip ? rlen - off : (size_t)skip;
			off += k;
			skip -= k;
			if (skip)
				return off;
		}
		if (rlen - off < 4)
			return off;
		const uint8_t *p = rbuf + off;
		uint32_t len = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
		if (len < 8 || len > 8 + MAX_BODY) {
			agent_log("invalid frame length %u; discarding %u bytes", len, len);
			off += 4;
			skip = len;
			continue;
		}
		if (rlen - off < 4 + (size_t)len)
			return off;
		handle_frame(p + 4, len);
		off += 4 + (size_t)len;
	}
}

/* One read per readiness; returns 0 normally, -1 when the peer is gone. Under --serve-stdio
 * and --krun that ends the agent (a closed pipe or vsock connection never comes back); in a
 * QEMU VM the host may (re)connect the virtio port later, so we back off. */
static int channel_read(void)
{
	ssize_t n = read(g.chan_in, rbuf + rlen, sizeof rbuf - rlen);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return 0;
	if (n <= 0) {
		if (!g.pid1)
			agent_exit(n == 0 ? 0 : 1);
		return -1;
	}
	rlen += (size_t)n;
	size_t used = parse_frames();
	memmove(rbuf, rbuf + used, rlen - used);
	rlen -= used;
	return 0;
}

/* ---- setup ---- */

/* Setup failure after boot: as PID 1 say why on the console and power off, never exit. */
static void __attribute__((noreturn)) die(const char *what)
{
	int err = errno;
	if (g.pid1 || g.krun) {
		boot_log("%s: %s", what, strerror(err));
		agent_exit(1);
	}
	fprintf(stderr, "msb-agent: %s: %s\n", what, strerror(err));
	exit(1);
}

static void epoll_add(int fd, uint64_t data)
{
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = data};
	if (epoll_ctl(g.epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
		die("epoll_ctl");
}

/* Test mode: the channel is our stdin/stdout. Keep private CLOEXEC copies and point 0/1 at
 * /dev/null, so children never inherit the channel and stray writes cannot corrupt it. */
static void setup_stdio(void)
{
	g.chan_in = fcntl(0, F_DUPFD_CLOEXEC, 3);
	g.chan_out = fcntl(1, F_DUPFD_CLOEXEC, 3);
	int nul = open("/dev/null", O_RDWR);
	if (g.chan_in < 0 || g.chan_out < 0 || nul < 0)
		die("setting up stdio");
	dup2(nul, 0);
	dup2(nul, 1);
	if (fcntl(2, F_GETFD) < 0)
		dup2(nul, 2);
	if (nul > 2)
		close(nul);
	set_nonblock(g.chan_in);
	g.rw_fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	/* Orphans of our execs come back to us, as they would to PID 1. */
	prctl(PR_SET_CHILD_SUBREAPER, 1);
}

static void setup_common(void)
{
	umask(0); /* FILE_WRITE modes are exact; children get 022 in spawn */
	signal(SIGPIPE, SIG_IGN);
	signal(SIGCHLD, SIG_DFL); /* an inherited SIG_IGN would auto-reap and hide exit codes */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigprocmask(SIG_BLOCK, &set, NULL);
	g.sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	g.epfd = epoll_create1(EPOLL_CLOEXEC);
	g.devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (g.sigfd < 0 || g.epfd < 0 || g.devnull < 0)
		die("agent setup");
	epoll_add(g.chan_in, ev_data(EV_CHAN, 0, 0));
	epoll_add(g.sigfd, ev_data(EV_SIG, 0, 0));
}

static void send_ready(const struct boot_times *t)
{
	static const char version[] = AGENT_VERSION;
	const char *names[] = {"init", "modules", "root", "ready"};
	uint64_t vals[] = {t->init, t->modules, t->root, now_ns(CLOCK_BOOTTIME)};
	struct wr w;
	wr_begin(&w, T_READY, 0);
	wr_u32(&w, PROTO_VERSION);
	wr_bytes(&w, version, sizeof version - 1);
	wr_u32(&w, 4);
	for (int i = 0; i < 4; i++) {
		wr_bytes(&w, names[i], strlen(names[i]));
		wr_u64(&w, vals[i]);
	}
	wr_send(&w);
}

/* ---- event loop ---- */

static void loop(void)
{
	struct epoll_event evs[64];
	int64_t chan_paused_until = 0;
	for (;;) {
		int timeout = exec_timeout_ms();
		if (files_busy())
			timeout = 0;
		if (chan_paused_until && (timeout < 0 || timeout > 100))
			timeout = 100;
		int n = epoll_wait(g.epfd, evs, 64, timeout);
		if (n < 0 && errno != EINTR) {
			agent_log("epoll_wait: %s", strerror(errno));
			sleep_ms(10);
		}
		for (int i = 0; i < n; i++) {
			uint64_t d = evs[i].data.u64;
			unsigned kind = d & 0xff, slot = (d >> 8) & 0xffffff;
			uint32_t gen = (uint32_t)(d >> 32);
			if (kind == EV_CHAN) {
				/* A virtio port without a connected host reads EOF and polls readable:
				 * stop watching it for a while instead of spinning. */
				if (channel_read() < 0 && !chan_paused_until) {
					epoll_ctl(g.epfd, EPOLL_CTL_DEL, g.chan_in, NULL);
					chan_paused_until = mono_ms() + 100;
				}
			} else if (kind == EV_SIG) {
				exec_reap_all();
			} else {
				exec_on_event(kind, slot, gen, evs[i].events);
			}
		}
		if (chan_paused_until && mono_ms() >= chan_paused_until) {
			chan_paused_until = 0;
			epoll_add(g.chan_in, ev_data(EV_CHAN, 0, 0));
		}
		exec_check_timeouts();
		files_step();
	}
}

/* A held template boot says so instead of READY: HELD u32 version, bytes agent version,
 * bytes stage. */
static void send_held(void)
{
	static const char version[] = AGENT_VERSION;
	static const char stage[] = "root";
	struct wr w;
	wr_begin(&w, T_HELD, 0);
	wr_u32(&w, PROTO_VERSION);
	wr_bytes(&w, version, sizeof version - 1);
	wr_bytes(&w, stage, strlen(stage));
	wr_send(&w);
}

int main(int argc, char **argv)
{
	struct boot_times *tp = &boot_t, t;
	t.init = t.modules = t.root = now_ns(CLOCK_BOOTTIME);
	/* --serve-stdio wins even as PID 1 (e.g. a container whose channel is a pipe). As init of
	 * a VM, arguments are ignored: the kernel passes unknown command-line words to init. */
	if (argc > 1 && !strcmp(argv[1], "--serve-stdio")) {
		setup_stdio();
	} else if (argc > 1 && !strcmp(argv[1], "--krun")) {
		/* Before the PID 1 test: an older libkrun's init exec's its workload as PID 1. */
		g.krun = 1;
		boot_krun(&t, argc > 2 && !strcmp(argv[2], "--dry-run"));
	} else if (getpid() == 1) {
		g.pid1 = 1;
		boot_pid1(&t);
	} else if (argc > 1 && !strcmp(argv[1], "--version")) {
		printf("msb-agent %s (protocol %u)\n", AGENT_VERSION, PROTO_VERSION);
		return 0;
	} else {
		fprintf(stderr, "usage: msb-agent --serve-stdio | --krun [--dry-run] | --version  (runs as PID 1 in a QEMU VM)\n");
		return 2;
	}
	*tp = t;
	setup_common();
	if (g.held)
		send_held();
	else
		send_ready(tp);
	loop();
}
