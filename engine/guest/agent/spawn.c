/* Process creation for EXEC: the request body, the child's stdio, the child itself.
 *
 * The child is created with clone(CLONE_VM | CLONE_VFORK), like posix_spawn: no page tables
 * are copied (that matters under TCG, where fork of even a small process costs a lot) and the
 * parent resumes only once the child has called execve or exited. Because the memory is
 * shared, the child reports a failure by storing errno in `struct spawn` (the equivalent of
 * the usual CLOEXEC error pipe, without the extra fds and syscalls). The child only makes
 * raw, async-signal-safe calls and never returns into parent frames: it runs on its own stack.
 */
#define _GNU_SOURCE
#include "spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

/* Only one child uses it at a time: CLONE_VFORK suspends us until it has exec'd or exited. */
static uint8_t child_stack[128 * 1024] __attribute__((aligned(64)));

static const char default_path[] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

static void child_fail(struct spawn *s, const char *step)
{
	s->err = errno ? errno : EINVAL;
	s->err_step = step;
	_exit(127);
}

/* execve, and for a file without a #! line (ENOEXEC) run it with /bin/sh like execvp does. */
static void try_exec(struct spawn *s, const char *file)
{
	execve(file, s->argv, s->envp);
	if (errno == ENOEXEC && s->sh_argv) {
		s->sh_argv[1] = (char *)file;
		execve("/bin/sh", s->sh_argv, s->envp);
		errno = ENOEXEC;
	}
}

/* PATH search with the PATH of the exec's own environment (glibc's execvpe would use ours). */
static void exec_search(struct spawn *s)
{
	const char *file = s->argv[0];
	if (!*file) {
		errno = ENOENT;
		return;
	}
	if (strchr(file, '/')) {
		try_exec(s, file);
		return;
	}
	size_t flen = strlen(file);
	char buf[PATH_MAX];
	int eacces = 0;
	const char *p = s->path ? s->path : default_path;
	for (;;) {
		const char *end = strchrnul(p, ':');
		size_t dlen = (size_t)(end - p);
		if (dlen + 1 + flen < sizeof buf) {
			/* An empty PATH element means the current directory. */
			if (dlen == 0) {
				buf[0] = '.';
				dlen = 1;
			} else {
				memcpy(buf, p, dlen);
			}
			buf[dlen] = '/';
			memcpy(buf + dlen + 1, file, flen + 1);
			/* A failed execve is expensive (the kernel builds a new mm before it looks the
			 * file up: ~170 us each under TCG), so skip entries that plainly do not exist. */
			if (access(buf, F_OK) < 0)
				errno = ENOENT;
			else
				try_exec(s, buf);
			switch (errno) {
			case EACCES:
				eacces = 1;
				break;
			case ENOENT:
			case ENOTDIR:
			case ESTALE:
			case ENODEV:
			case ETIMEDOUT:
			case ENAMETOOLONG:
				break;
			default:
				return; /* found but broken (ENOEXEC, E2BIG, ...): report that */
			}
		}
		if (!*end)
			break;
		p = end + 1;
	}
	errno = eacces ? EACCES : ENOENT;
}

static int child_main(void *arg)
{
	struct spawn *s = arg;

	/* Undo what the agent changed for itself: ignored signals and the mask survive execve. */
	struct sigaction dfl = {.sa_handler = SIG_DFL};
	sigaction(SIGPIPE, &dfl, NULL);
	sigaction(SIGCHLD, &dfl, NULL);
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);

	/* New session = new process group led by the child, so the group can be killed as one. */
	if (setsid() < 0)
		child_fail(s, "setsid");
	if (s->tty && ioctl(s->fd_out, TIOCSCTTY, 0) < 0)
		child_fail(s, "TIOCSCTTY");
	/* All agent fds are >= 3 (main keeps 0-2 occupied), so dup2 never hits its own source and
	 * always clears CLOEXEC on the copy. */
	if (dup2(s->fd_in, 0) < 0 || dup2(s->fd_out, 1) < 0 || dup2(s->fd_err, 2) < 0)
		child_fail(s, "dup2");
	umask(022);
	if (chdir(s->cwd) < 0)
		child_fail(s, "chdir");
	/* Raw syscalls: glibc's set*id wrappers synchronise threads through shared state. */
	if (s->gid != KEEP_ID || s->uid != KEEP_ID) {
		if (syscall(SYS_setgroups, 0, NULL) < 0)
			child_fail(s, "setgroups");
	}
	if (s->gid != KEEP_ID && syscall(SYS_setgid, s->gid) < 0)
		child_fail(s, "setgid");
	if (s->uid != KEEP_ID && syscall(SYS_setuid, s->uid) < 0)
		child_fail(s, "setuid");
	exec_search(s);
	child_fail(s, "execve");
	return 127;
}

pid_t spawn_child(struct spawn *s)
{
	s->err = 0;
	s->err_step = NULL;
	pid_t pid = clone(child_main, child_stack + sizeof child_stack, CLONE_VM | CLONE_VFORK | SIGCHLD, s);
	if (pid < 0) {
		s->err = errno;
		s->err_step = "clone";
		return -1;
	}
	if (s->err) {
		/* The child has already _exit'ed (that is what released us); collect it here so the
		 * SIGCHLD reaper never sees a pid it does not know. */
		while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
			;
		return -1;
	}
	return pid;
}

/* ---- the EXEC request ---- */

/* Reads list<bytes> as C strings. With vec == NULL it only measures (first pass). */
static uint32_t read_strlist(struct rd *r, char **vec, char **sp, size_t *bytes, int *has_nul)
{
	uint32_t n = rd_count(r, 4);
	for (uint32_t i = 0; i < n && !r->err; i++) {
		uint32_t len;
		const uint8_t *p = rd_bytes(r, &len);
		if (len && memchr(p, 0, len))
			*has_nul = 1;
		*bytes += (size_t)len + 1;
		if (vec && !r->err) {
			memcpy(*sp, p, len);
			(*sp)[len] = 0;
			vec[i] = *sp;
			*sp += len + 1;
		}
	}
	if (vec)
		vec[r->err ? 0 : n] = NULL;
	return n;
}

static void read_fixed(struct rd *r, struct exec_req *q)
{
	q->tty = rd_u8(r);
	q->want_stdin = rd_u8(r);
	q->rows = rd_u16(r);
	q->cols = rd_u16(r);
	q->timeout_ms = rd_u32(r);
	q->window = rd_u32(r);
	q->uid = rd_u32(r);
	q->gid = rd_u32(r);
}

/* Parses an EXEC body into one allocation. Returns NULL or the reason the frame is invalid;
 * *einval is set for a well-formed request that cannot be honoured (empty argv, NUL in a string). */
const char *parse_exec(struct rd *r0, struct exec_req *q, int *einval)
{
	struct rd r = *r0;
	size_t bytes = 0;
	int has_nul = 0;
	read_fixed(&r, q);
	q->argc = read_strlist(&r, NULL, NULL, &bytes, &has_nul);
	q->envc = read_strlist(&r, NULL, NULL, &bytes, &has_nul);
	uint32_t cwdlen;
	const uint8_t *cwd = rd_bytes(&r, &cwdlen);
	const char *why = rd_end(&r);
	if (why)
		return why;
	if (cwdlen && memchr(cwd, 0, cwdlen))
		has_nul = 1;
	if (q->argc == 0 || has_nul) {
		*einval = 1;
		return NULL;
	}
	size_t nptr = (q->argc + 1) + (q->envc + 1) + (q->argc + 2);
	q->mem = malloc(nptr * sizeof(char *) + bytes + cwdlen + 2);
	if (!q->mem) {
		*einval = ENOMEM;
		return NULL;
	}
	q->argv = q->mem;
	q->envp = q->argv + q->argc + 1;
	q->sh_argv = q->envp + q->envc + 1;
	char *sp = (char *)(q->sh_argv + q->argc + 2);
	/* Second pass copies; the first one proved every read is in bounds. */
	r = *r0;
	read_fixed(&r, q);
	read_strlist(&r, q->argv, &sp, &bytes, &has_nul);
	read_strlist(&r, q->envp, &sp, &bytes, &has_nul);
	q->cwd = sp;
	if (cwdlen)
		memcpy(sp, cwd, cwdlen);
	sp[cwdlen] = 0;
	if (!cwdlen)
		strcpy(sp, "/");
	q->sh_argv[0] = "/bin/sh";
	q->sh_argv[1] = q->argv[0];
	for (uint32_t i = 1; i <= q->argc; i++)
		q->sh_argv[i + 1] = q->argv[i];
	return NULL;
}

const char *env_path(char **envp)
{
	for (; *envp; envp++)
		if (!strncmp(*envp, "PATH=", 5))
			return *envp + 5;
	return NULL;
}

static int pipe_cloexec(int p[2])
{
	return pipe2(p, O_CLOEXEC);
}

/* Opens a pty pair: master (ours, non-blocking) and slave (the child's). */
static int open_pty(int *master, int *slave, uint16_t rows, uint16_t cols)
{
	int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (m < 0)
		return -1;
	if (grantpt(m) < 0 || unlockpt(m) < 0)
		goto fail;
	int s = ioctl(m, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (s < 0) {
		char name[64];
		if (ptsname_r(m, name, sizeof name) != 0)
			goto fail;
		s = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
		if (s < 0)
			goto fail;
	}
	struct winsize ws = {.ws_row = rows, .ws_col = cols};
	ioctl(m, TIOCSWINSZ, &ws);
	set_nonblock(m);
	*master = m;
	*slave = s;
	return 0;
fail:;
	int err = errno;
	close(m);
	errno = err;
	return -1;
}

void close_fds(int *fds, int n)
{
	for (int i = 0; i < n; i++)
		if (fds[i] >= 0) {
			close(fds[i]);
			fds[i] = -1;
		}
}

/* Creates the child's stdio. parent[]: stdin write, stdout read, stderr read (tty: master in
 * [1]); child[]: stdin, stdout, stderr (tty: slave in all three, owned by child[1]). */
int make_stdio(const struct exec_req *q, int parent[3], int child[3])
{
	for (int i = 0; i < 3; i++)
		parent[i] = child[i] = -1;
	if (q->tty) {
		/* The tty is the process's stdin too: a terminal program expects it (stty, shells). */
		if (open_pty(&parent[1], &child[1], q->rows, q->cols) < 0)
			return -1;
		return 0;
	}
	int p[2];
	if (q->want_stdin) {
		if (pipe_cloexec(p) < 0)
			goto fail;
		child[0] = p[0];
		parent[0] = p[1];
		set_nonblock(parent[0]);
	}
	for (int i = 1; i <= 2; i++) {
		if (pipe_cloexec(p) < 0)
			goto fail;
		parent[i] = p[0];
		child[i] = p[1];
		set_nonblock(parent[i]);
	}
	return 0;
fail:;
	int err = errno;
	close_fds(parent, 3);
	close_fds(child, 3);
	errno = err;
	return -1;
}
