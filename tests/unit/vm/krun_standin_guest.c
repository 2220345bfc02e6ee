/*
 * The stand-in libkrun's guest emulation (KRUN_STANDIN_BOOT): on the host, what libkrun and its
 * init do in a VM, so KrunBackend's whole launch path runs against the real agent.
 *
 * In private mount, UTS, network and PID namespaces it chroots into the root given to
 * krun_set_root, mounts /dev and /proc there, applies the rlimits, and forks the exec'd program
 * (the agent, --krun) with the environment of krun_set_exec, waiting for it like init. There is
 * no vsock: MSB_PORT=vsock:N is replaced by MSB_PORT=fd:M, M one end of a socket pair whose
 * other end this process relays to the unix socket krun_add_vsock_port gave for N, connecting
 * it when the guest first writes (as libkrun's muxer connects it when the guest connects the
 * port). The guest's output goes to stdout, as libkrun's console does. Needs root.
 */
#define _GNU_SOURCE
#include "krun_standin.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static void __attribute__((noreturn)) die(const char *what)
{
	fprintf(stderr, "krun-standin: %s: %s\n", what, strerror(errno));
	_exit(71);
}

/* The unix socket libkrun would connect when the guest connects vsock port N. */
static int connect_port(void)
{
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (!st.port_path || strlen(st.port_path) >= sizeof a.sun_path)
		die("no usable vsock port mapping");
	strcpy(a.sun_path, st.port_path);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0)
		die("connecting the vsock port's socket");
	return fd;
}

/* MSB_PORT=vsock:N for the mapped port N becomes MSB_PORT=fd:<chan>. */
static void map_port_env(int chan)
{
	char want[32], *repl = malloc(32);
	snprintf(want, sizeof want, "MSB_PORT=vsock:%u", st.port);
	snprintf(repl, 32, "MSB_PORT=fd:%d", chan);
	for (int i = 0; st.envp[i]; i++)
		if (!strcmp(st.envp[i], want))
			st.envp[i] = repl;
}

static void set_rlimits(void)
{
	for (int i = 0; st.rlimits[i]; i++) {
		unsigned long long id, cur, max;
		if (sscanf(st.rlimits[i], "%llu=%llu:%llu", &id, &cur, &max) != 3)
			die("malformed rlimit");
		struct rlimit r = {.rlim_cur = cur, .rlim_max = max};
		if (setrlimit((int)id, &r) < 0) /* libkrun's init also just reports it */
			printf("krun-standin: setrlimit %s: %s\n", st.rlimits[i], strerror(errno));
	}
}

/* PID 1 of the emulated guest: set up like libkrun's init, run the workload, wait for it. */
static void __attribute__((noreturn)) guest_init(int chan)
{
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		die("making mounts private");
	if (chroot(st.root) < 0 || chdir("/") < 0)
		die("chroot into the root");
	mkdir("/dev", 0755);
	mkdir("/proc", 0755);
	if (mount("devtmpfs", "/dev", "devtmpfs", 0, NULL) < 0 || mount("proc", "/proc", "proc", 0, NULL) < 0)
		die("mounting /dev and /proc");
	set_rlimits();
	if (st.workdir && chdir(st.workdir) < 0)
		die("chdir to the workdir");
	map_port_env(chan);
	printf("krun-standin: starting %s\n", st.exec_path);
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		dup2(1, 2); /* the guest console is the VMM's stdout */
		execve(st.exec_path, st.argv, st.envp);
		_exit(errno == ENOENT ? 127 : 126);
	}
	close(chan);
	for (;;) { /* reap everything, as init does, until the workload is gone */
		int status;
		pid_t p = waitpid(-1, &status, 0);
		if (p == pid)
			_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
		if (p < 0 && errno != EINTR)
			die("waitpid");
	}
}

static void write_all(int fd, const char *p, ssize_t n)
{
	while (n > 0) {
		ssize_t k = write(fd, p, (size_t)n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return; /* the peer is gone: its side will see EOF */
		p += k;
		n -= k;
	}
}

/* Moves what is readable on `from` to *to, first connecting the vsock port's socket if *to
 * is -1 (only for data: a guest that exits without a word never connects). Returns 0 at EOF
 * or error. */
static int relay(int from, int *to)
{
	char buf[65536];
	ssize_t n = read(from, buf, sizeof buf);
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return 1;
	if (n <= 0)
		return 0;
	if (*to < 0)
		*to = connect_port();
	write_all(*to, buf, n);
	return 1;
}

/* The VMM's side of the vsock port: like libkrun's muxer it connects the unix socket only
 * once the guest uses the port (the agent's first frame), then carries bytes both ways. */
static void __attribute__((noreturn)) vmm_loop(pid_t init, int guest)
{
	int host = -1;
	for (;;) {
		int status;
		if (waitpid(init, &status, WNOHANG) == init) {
			fcntl(guest, F_SETFL, O_NONBLOCK);
			while (guest >= 0 && relay(guest, &host))
				; /* the guest's last words */
			_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
		}
		struct pollfd p[2] = {{.fd = guest, .events = POLLIN}, {.fd = host, .events = POLLIN}};
		if (poll(p, 2, 20) <= 0)
			continue;
		if (guest >= 0 && (p[0].revents & (POLLIN | POLLHUP | POLLERR)) && !relay(guest, &host)) {
			if (host >= 0)
				shutdown(host, SHUT_WR);
			close(guest);
			guest = -1;
		}
		if (host >= 0 && (p[1].revents & (POLLIN | POLLHUP | POLLERR)) && (guest < 0 || !relay(host, &guest))) {
			close(host); /* the engine closed the channel: the agent reads EOF */
			host = -1;
			if (guest >= 0)
				shutdown(guest, SHUT_WR);
		}
	}
}

void standin_boot(void)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
		die("socketpair");
	/* A PID namespace too: the guest's processes must stay among themselves (whatever the
	 * agent signals, it cannot reach the host's processes). */
	if (unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWNET | CLONE_NEWPID) < 0)
		die("unshare (the boot emulation needs root)");
	pid_t init = fork();
	if (init < 0)
		die("fork");
	if (init == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL); /* the VM dies with its VMM */
		close(sv[0]);
		guest_init(sv[1]);
	}
	close(sv[1]);
	vmm_loop(init, sv[0]);
}

