/* Process creation for EXEC (spawn.c). */
#ifndef MSB_SPAWN_H
#define MSB_SPAWN_H

#include <stdint.h>
#include <sys/types.h>

#define KEEP_ID 0xFFFFFFFFu

struct spawn {
	/* in */
	int tty;           /* fd_out is a pty slave to become the controlling terminal */
	int fd_in, fd_out, fd_err;
	const char *cwd;
	uint32_t uid, gid; /* KEEP_ID = unchanged */
	char **argv, **envp;
	const char *path;  /* PATH of envp, or NULL for the default */
	char **sh_argv;    /* {"/bin/sh", <slot>, argv[1..], NULL} for ENOEXEC fallback */
	/* out: written by the child (shared memory) when it fails before execve succeeds */
	int err;
	const char *err_step;
};

/* Returns the pid, or -1 with s->err / s->err_step set (the failed child is already reaped). */
pid_t spawn_child(struct spawn *s);

#endif
