/* Process creation for EXEC.
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
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
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
