/* EXEC and the messages that address a running exec (STDIN, STDIN_EOF, RESIZE, SIGNAL, ACK).
 *
 * Each exec lives in a fixed slot. Its output fds are in epoll only while they may be read
 * (flow-control credit left), because EPOLLHUP is reported even with an empty interest mask
 * and would spin the loop. After the process is reaped its pipes are drained of the bytes
 * that were already in them, then closed, and only then EXIT is sent.
 */
#define _GNU_SOURCE
#include "agent.h"
#include "spawn.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

/* A pty reports no byte count that includes data still in the tty flip buffers, so after exit
 * it is read until EAGAIN/EIO, bounded so a background writer cannot delay EXIT forever. */
#define TTY_DRAIN_CAP (1u << 20)

struct pending {
	uint8_t *d;
	size_t off, len, cap;
};

struct exec {
	int used;
	uint32_t id;
	uint32_t gen;
	pid_t pid;
	int tty;
	int in_fd;         /* stdin pipe (write end); for a tty the master out_fd[0] is used */
	int in_open;       /* stdin still accepts data */
	int eof_req;       /* STDIN_EOF received: close / send ^D once pending is written */
	struct pending pend;
	int out_fd[2];     /* stdout, stderr read ends; tty: master in [0], [1] = -1 */
	int64_t drain[2];  /* -1 while running; after reap: bytes still to read */
	int tty_eof;       /* pty read EIO while the process runs: the master stays open */
	uint32_t ev_out[2], ev_in; /* registered epoll masks (0 = not registered) */
	uint64_t window;   /* 0 = unlimited */
	uint64_t unacked;
	int reaped, status, timed_out;
	int64_t deadline;  /* CLOCK_MONOTONIC ms, 0 = none */
};

static struct exec execs[MAX_EXECS];

/* ---- small helpers ---- */

static struct exec *exec_by_id(uint32_t id)
{
	for (int i = 0; i < MAX_EXECS; i++)
		if (execs[i].used && execs[i].id == id)
			return &execs[i];
	return NULL;
}

static unsigned slot_of(const struct exec *e)
{
	return (unsigned)(e - execs);
}

static uint64_t credit(const struct exec *e)
{
	if (!e->window)
		return UINT64_MAX;
	return e->unacked >= e->window ? 0 : e->window - e->unacked;
}

static int stdin_fd(const struct exec *e)
{
	if (!e->in_open)
		return -1;
	return e->tty ? e->out_fd[0] : e->in_fd;
}

/* Adds, modifies or removes fd in epoll so that its mask becomes `want`. */
static void set_interest(int fd, uint32_t *cur, uint32_t want, uint64_t data)
{
	if (want == *cur)
		return;
	struct epoll_event ev = {.events = want, .data.u64 = data};
	int op = !*cur ? EPOLL_CTL_ADD : !want ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
	if (epoll_ctl(g.epfd, op, fd, &ev) < 0)
		agent_log("epoll_ctl(%d, fd %d): %s", op, fd, strerror(errno));
	*cur = want;
}

static void update_interest(struct exec *e)
{
	uint64_t c = credit(e);
	int has_pending = e->pend.len > 0 && stdin_fd(e) >= 0;
	for (int s = 0; s < 2; s++) {
		if (e->out_fd[s] < 0)
			continue;
		uint32_t want = 0;
		if (e->drain[s] < 0 && c > 0 && !e->tty_eof)
			want |= EPOLLIN;
		if (e->tty && s == 0 && has_pending)
			want |= EPOLLOUT;
		set_interest(e->out_fd[s], &e->ev_out[s], want, ev_data(EV_OUT0 + s, slot_of(e), e->gen));
	}
	if (!e->tty && e->in_fd >= 0)
		set_interest(e->in_fd, &e->ev_in, has_pending ? EPOLLOUT : 0, ev_data(EV_IN, slot_of(e), e->gen));
}

static void pending_clear(struct pending *p)
{
	free(p->d);
	memset(p, 0, sizeof *p);
}

/* Stops accepting stdin: closes the pipe (the master of a tty stays open for output). */
static void close_stdin(struct exec *e)
{
	e->in_open = 0;
	pending_clear(&e->pend);
	if (e->in_fd >= 0) {
		set_interest(e->in_fd, &e->ev_in, 0, 0);
		close(e->in_fd);
		e->in_fd = -1;
	}
}

static void close_out(struct exec *e, int s)
{
	if (e->out_fd[s] < 0)
		return;
	set_interest(e->out_fd[s], &e->ev_out[s], 0, 0);
	if (e->tty)
		close_stdin(e);
	close(e->out_fd[s]);
	e->out_fd[s] = -1;
}

static void exec_free(struct exec *e)
{
	close_stdin(e);
	close_out(e, 0);
	close_out(e, 1);
	uint32_t gen = e->gen + 1;
	memset(e, 0, sizeof *e);
	e->gen = gen;
	e->in_fd = e->out_fd[0] = e->out_fd[1] = -1;
}

/* ---- output ---- */

/* Sends up to `want` bytes of one output stream as a STDOUT/STDERR frame. Pipes go by
 * splice (under TCG every copy the guest CPU makes is expensive); a pty, an empty pipe (the
 * read() then tells EOF from EAGAIN) or a channel without splice use read(). Returns what
 * read() would: bytes sent, 0 at EOF, -1 with errno. */
static ssize_t forward(struct exec *e, int s, uint64_t want)
{
	uint8_t type = s == 0 ? T_STDOUT : T_STDERR;
	int fd = e->out_fd[s], avail = 0;
	if (!e->tty && ioctl(fd, FIONREAD, &avail) == 0 && avail > 0) {
		size_t n = (uint64_t)avail < want ? (size_t)avail : (size_t)want;
		if (send_pipe_frame(type, e->id, fd, n) == 0)
			return (ssize_t)n;
	}
	ssize_t n = read(fd, data_buf + HDR_LEN, want);
	if (n > 0)
		send_data_frame(type, e->id, (size_t)n);
	return n;
}

/* Reads one stream into STDOUT/STDERR frames. While the process runs: one frame per readiness
 * (level-triggered epoll calls again). After reap: until the drain budget is spent. */
static void pump(struct exec *e, int s)
{
	while (e->out_fd[s] >= 0) {
		uint64_t want = credit(e);
		if (want == 0)
			return;
		if (want > CHUNK)
			want = CHUNK;
		if (e->drain[s] >= 0 && want > (uint64_t)e->drain[s])
			want = (uint64_t)e->drain[s];
		ssize_t n = forward(e, s, want);
		if (n > 0) {
			if (e->window)
				e->unacked += (uint64_t)n;
			if (e->drain[s] < 0)
				return;
			e->drain[s] -= n;
			if (e->drain[s] == 0)
				close_out(e, s);
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN && e->drain[s] < 0)
			return;
		/* EOF, EIO (pty slave closed everywhere), or nothing left after exit. Closing a pty
		 * master hangs up the session, so while the process runs (it may have closed its
		 * stdio just before exit_group) the master only stops being polled. */
		if (e->tty && !e->reaped) {
			e->tty_eof = 1;
			return;
		}
		close_out(e, s);
	}
}

static void send_exit(struct exec *e)
{
	if (g.sync_after_exec && g.rw_fd >= 0 && syncfs(g.rw_fd) < 0)
		agent_log("syncfs after exec %u: %s", e->id, strerror(errno));
	int32_t code = -1, sig = 0;
	if (WIFEXITED(e->status))
		code = WEXITSTATUS(e->status);
	else if (WIFSIGNALED(e->status))
		sig = WTERMSIG(e->status);
	struct wr w;
	wr_begin(&w, T_EXIT, e->id);
	wr_u32(&w, (uint32_t)code);
	wr_u32(&w, (uint32_t)sig);
	wr_u8(&w, (uint8_t)e->timed_out);
	wr_send(&w);
}

/* Call after anything changed an exec; may free it. */
static void settle(struct exec *e)
{
	if (e->reaped && e->out_fd[0] < 0 && e->out_fd[1] < 0) {
		send_exit(e);
		exec_free(e);
		return;
	}
	update_interest(e);
}

/* ---- stdin ---- */

static void stdin_flush(struct exec *e)
{
	int fd = stdin_fd(e);
	struct pending *p = &e->pend;
	while (fd >= 0 && p->len) {
		ssize_t n = write(fd, p->d + p->off, p->len);
		if (n > 0) {
			p->off += (size_t)n;
			p->len -= (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		/* EPIPE / EIO: nobody reads stdin any more; drop what is left. */
		close_stdin(e);
		return;
	}
	if (fd >= 0 && e->eof_req) {
		if (e->tty)
			e->in_open = 0; /* the ^D went out; later STDIN would land after EOF */
		else
			close_stdin(e);
	}
	if (!p->len) {
		p->off = 0;
		if (p->cap > CHUNK)
			pending_clear(p); /* do not keep a large buffer around after a burst */
	}
}

static void pending_add(struct exec *e, const uint8_t *d, size_t n)
{
	struct pending *p = &e->pend;
	if (p->len + n > STDIN_CAP) {
		agent_log("exec %u: more than %u bytes of stdin pending; dropping %zu bytes", e->id, STDIN_CAP, n);
		return;
	}
	if (p->off + p->len + n > p->cap) {
		if (p->off) {
			memmove(p->d, p->d + p->off, p->len);
			p->off = 0;
		}
		if (p->len + n > p->cap) {
			size_t cap = p->cap ? p->cap : 4096;
			while (cap < p->len + n)
				cap *= 2;
			uint8_t *nd = realloc(p->d, cap);
			if (!nd) {
				agent_log("exec %u: out of memory for stdin; dropping %zu bytes", e->id, n);
				return;
			}
			p->d = nd;
			p->cap = cap;
		}
	}
	memcpy(p->d + p->off + p->len, d, n);
	p->len += n;
}

static void on_stdin(struct exec *e, const uint8_t *d, size_t n)
{
	int fd = stdin_fd(e);
	if (fd < 0 || e->eof_req)
		return; /* stdin=0, already closed, or the reader went away: like writing to a closed pipe */
	/* Nothing queued: write straight from the frame and keep only the rest. */
	while (!e->pend.len && n) {
		ssize_t k = write(fd, d, n);
		if (k > 0) {
			d += k;
			n -= (size_t)k;
		} else if (k < 0 && errno == EAGAIN) {
			break;
		} else if (!(k < 0 && errno == EINTR)) {
			close_stdin(e);
			return;
		}
	}
	if (n)
		pending_add(e, d, n);
}

static void on_stdin_eof(struct exec *e)
{
	if (stdin_fd(e) < 0 || e->eof_req)
		return;
	e->eof_req = 1;
	if (e->tty) {
		static const uint8_t eot = 0x04; /* VEOF: the line discipline turns it into EOF */
		pending_add(e, &eot, 1);
	}
	stdin_flush(e);
}

/* ---- EXEC ---- */

static struct exec *free_slot(void)
{
	for (int i = 0; i < MAX_EXECS; i++)
		if (!execs[i].used)
			return &execs[i];
	return NULL;
}

static void exec_start(uint32_t id, struct rd *r)
{
	struct exec_req q;
	memset(&q, 0, sizeof q);
	int einval = 0;
	const char *why = parse_exec(r, &q, &einval);
	if (why) {
		bad_frame(T_EXEC, id, why);
		return;
	}
	if (einval) {
		send_result(id, einval == ENOMEM ? ENOMEM : EINVAL, "%s",
			    einval == ENOMEM ? "out of memory" : "argv must be non-empty and strings must not contain NUL");
		return;
	}
	struct exec *e = NULL;
	int parent[3], child[3];
	if (exec_by_id(id)) {
		send_result(id, EEXIST, "exec id %u is already running", id);
		goto out;
	}
	if (!(e = free_slot())) {
		send_result(id, EAGAIN, "too many running execs (%d)", MAX_EXECS);
		goto out;
	}
	if (make_stdio(&q, parent, child) < 0) {
		send_result(id, errno, "creating stdio: %s", strerror(errno));
		goto out;
	}
	struct spawn sp = {
		.tty = q.tty,
		.fd_in = q.tty ? child[1] : child[0] >= 0 ? child[0] : g.devnull,
		.fd_out = child[1],
		.fd_err = q.tty ? child[1] : child[2],
		.cwd = q.cwd,
		.uid = q.uid,
		.gid = q.gid,
		.argv = q.argv,
		.envp = q.envp,
		.path = env_path(q.envp),
		.sh_argv = q.sh_argv,
	};
	pid_t pid = spawn_child(&sp);
	close_fds(child, 3);
	if (pid < 0) {
		close_fds(parent, 3);
		send_result(id, sp.err, "%s %s: %s", sp.err_step, sp.err_step && !strcmp(sp.err_step, "chdir") ? q.cwd : q.argv[0],
			    strerror(sp.err));
		goto out;
	}
	e->used = 1;
	e->id = id;
	e->pid = pid;
	e->tty = q.tty;
	e->in_fd = parent[0];
	e->in_open = q.tty || parent[0] >= 0;
	e->out_fd[0] = parent[1];
	e->out_fd[1] = parent[2];
	e->drain[0] = e->drain[1] = -1;
	e->window = q.window;
	e->deadline = q.timeout_ms ? mono_ms() + q.timeout_ms : 0;
	struct wr w;
	wr_begin(&w, T_STARTED, id);
	wr_u32(&w, (uint32_t)pid);
	wr_send(&w);
	update_interest(e);
out:
	free(q.mem);
}

/* ---- reaping, timeouts ---- */

static void on_reaped(struct exec *e, int status)
{
	e->reaped = 1;
	e->status = status;
	e->deadline = 0;
	if (!e->tty)
		close_stdin(e);
	for (int s = 0; s < 2; s++) {
		if (e->out_fd[s] < 0)
			continue;
		int n = 0;
		if (e->tty)
			n = e->tty_eof ? 0 : TTY_DRAIN_CAP;
		else if (ioctl(e->out_fd[s], FIONREAD, &n) < 0)
			n = 0;
		/* Only what the process wrote before it exited; background children holding the pipe
		 * open do not keep EXIT waiting. */
		e->drain[s] = n;
		if (n == 0)
			close_out(e, s);
		else
			pump(e, s);
	}
	settle(e);
}

/* PID 1 (or a subreaper) must reap every child, orphans included, or zombies pile up. */
void exec_reap_all(void)
{
	uint8_t si[128 * 8]; /* struct signalfd_siginfo is 128 bytes; the content is unused */
	while (read(g.sigfd, si, sizeof si) > 0)
		;
	for (;;) {
		int st;
		pid_t pid = waitpid(-1, &st, WNOHANG);
		if (pid <= 0)
			break;
		for (int i = 0; i < MAX_EXECS; i++) {
			if (execs[i].used && !execs[i].reaped && execs[i].pid == pid) {
				on_reaped(&execs[i], st);
				break;
			}
		}
	}
}

int exec_timeout_ms(void)
{
	int64_t now = 0, best = -1;
	for (int i = 0; i < MAX_EXECS; i++) {
		if (!execs[i].used || !execs[i].deadline)
			continue;
		if (!now)
			now = mono_ms();
		int64_t left = execs[i].deadline - now;
		if (left < 0)
			left = 0;
		if (best < 0 || left < best)
			best = left;
	}
	return best > INT32_MAX ? INT32_MAX : (int)best;
}

/* Kills every process of session `sid`: job-control shells move jobs into their own process
 * groups, which a group kill alone would miss. */
static void kill_session(pid_t sid)
{
	DIR *d = opendir("/proc");
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d))) {
		char *end;
		long pid = strtol(de->d_name, &end, 10);
		if (*end || pid <= 1)
			continue;
		char path[64], buf[512];
		snprintf(path, sizeof path, "/proc/%ld/stat", pid);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		ssize_t n = read(fd, buf, sizeof buf - 1);
		close(fd);
		if (n <= 0)
			continue;
		buf[n] = 0;
		char *p = strrchr(buf, ')');
		int ppid, pgrp, sess;
		char state;
		if (p && sscanf(p + 1, " %c %d %d %d", &state, &ppid, &pgrp, &sess) == 4 && sess == sid)
			kill((pid_t)pid, SIGKILL);
	}
	closedir(d);
}

void exec_check_timeouts(void)
{
	int64_t now = mono_ms();
	for (int i = 0; i < MAX_EXECS; i++) {
		struct exec *e = &execs[i];
		if (!e->used || !e->deadline || e->deadline > now)
			continue;
		e->deadline = 0;
		e->timed_out = 1;
		kill(-e->pid, SIGKILL);
		kill_session(e->pid);
	}
}

void exec_signal_all(int sig)
{
	for (int i = 0; i < MAX_EXECS; i++)
		if (execs[i].used && !execs[i].reaped)
			kill(-execs[i].pid, sig);
}

void exec_kill_all(void)
{
	exec_signal_all(SIGKILL);
}

/* ---- dispatch ---- */

void exec_on_event(unsigned kind, unsigned slot, uint32_t gen, uint32_t events)
{
	if (slot >= MAX_EXECS || !execs[slot].used || execs[slot].gen != gen)
		return; /* stale: the exec finished earlier in this epoll batch */
	struct exec *e = &execs[slot];
	if ((kind == EV_IN || (kind == EV_OUT0 && e->tty)) && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
		stdin_flush(e);
	if (kind == EV_OUT0 || kind == EV_OUT1) {
		int s = kind == EV_OUT1;
		if (e->out_fd[s] >= 0 && e->drain[s] < 0 && (events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
			pump(e, s);
	}
	settle(e);
}

static void on_ack(struct exec *e, uint32_t n)
{
	e->unacked = n >= e->unacked ? 0 : e->unacked - n;
	for (int s = 0; s < 2; s++)
		if (e->drain[s] >= 0)
			pump(e, s);
}

static void on_signal(uint32_t id, struct exec *e, uint32_t signo, uint8_t group)
{
	if (signo < 1 || signo > (uint32_t)SIGRTMAX) {
		bad_frame(T_SIGNAL, id, "invalid signal number");
		return;
	}
	/* After reap the pid may be reused: never signal it then. */
	if (e && !e->reaped && kill(group ? -e->pid : e->pid, (int)signo) < 0)
		agent_log("exec %u: kill(%d): %s", id, (int)signo, strerror(errno));
}

void exec_on_frame(uint8_t type, uint32_t id, struct rd *r)
{
	if (type == T_EXEC) {
		exec_start(id, r);
		return;
	}
	struct exec *e = exec_by_id(id);
	const char *why = NULL;
	switch (type) {
	case T_STDIN:
		/* Unknown id: the exec just ended; the host may still have had input in flight. */
		if (e)
			on_stdin(e, r->p, r->len);
		break;
	case T_STDIN_EOF:
		if (!(why = rd_end(r)) && e)
			on_stdin_eof(e);
		break;
	case T_RESIZE: {
		struct winsize ws = {.ws_row = rd_u16(r), .ws_col = rd_u16(r)};
		if (!(why = rd_end(r)) && e && e->tty && e->out_fd[0] >= 0)
			ioctl(e->out_fd[0], TIOCSWINSZ, &ws); /* the kernel sends SIGWINCH */
		break;
	}
	case T_SIGNAL: {
		uint32_t signo = rd_u32(r);
		uint8_t group = rd_u8(r);
		if (!(why = rd_end(r)))
			on_signal(id, e, signo, group);
		break;
	}
	case T_ACK: {
		uint32_t n = rd_u32(r);
		if (!(why = rd_end(r)) && e)
			on_ack(e, n);
		break;
	}
	}
	if (why)
		bad_frame(type, id, why);
	else if (e)
		settle(e);
}
