/* Process creation for EXEC (spawn.c). */
#ifndef MSB_SPAWN_H
#define MSB_SPAWN_H

#include <stdint.h>
#include <sys/types.h>

#include "agent.h"

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

struct exec_req {
	uint8_t tty, want_stdin;
	uint16_t rows, cols;
	uint32_t timeout_ms, window, uid, gid;
	char **argv, **envp, **sh_argv, *cwd;
	uint32_t argc, envc;
	void *mem;
};

/* Parses an EXEC body into q (one allocation, q->mem, freed by the caller). Returns NULL or
 * why the frame is invalid; *einval is set (EINVAL or ENOMEM) for a well-formed request that
 * cannot be run. */
const char *parse_exec(struct rd *r, struct exec_req *q, int *einval);
/* PATH=... of envp, or NULL. */
const char *env_path(char **envp);
/* Creates the child's stdio. parent[]: stdin write, stdout read, stderr read (tty: master in
 * [1]); child[]: stdin, stdout, stderr (tty: the slave, in child[1] only). -1 = none. */
int make_stdio(const struct exec_req *q, int parent[3], int child[3]);
void close_fds(int *fds, int n);

/* Returns the pid, or -1 with s->err / s->err_step set (the failed child is already reaped). */
pid_t spawn_child(struct spawn *s);

#endif
