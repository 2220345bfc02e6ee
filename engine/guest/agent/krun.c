/* Under libkrun: the agent is the workload libkrun's init runs (msb-agent --krun).
 *
 * init has already mounted /dev, /proc, /sys, /dev/pts and /dev/shm and brought up lo; the
 * root is the host directory libkrun shares over virtio-fs. There is no kernel command line
 * of ours, so the boot parameters come from the environment krun_set_exec gave us
 * (engine/vm/krun.py builds it):
 *
 *   MSB_PORT=vsock:N      connect AF_VSOCK to the host (CID 2) port N: libkrun maps it to the
 *                         unix socket the engine listens on (krun_add_vsock_port)
 *   MSB_PORT=fd:N         the channel is the inherited, connected socket N (the ABI tests'
 *                         stand-in libkrun, which has no vsock, hands it over this way)
 *   MSB_HOSTNAME=NAME     the guest's hostname
 *   MSB_SYNC=1            syncfs after every exec (the writable layer is persistent)
 *   MSB_VOLn=TAG:ro|rw:PATH   virtio-fs volume n (0..15), as msb.vol= under QEMU
 *
 * init may run us as its child (newer libkrun: it waits for us and ends the VM with our
 * status) or exec us as PID 1 (older ones); either way we become a subreaper, so orphans of
 * our execs come back to us. Errors are fatal: written to the console, and the VM ends.
 */
#define _GNU_SOURCE
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CONNECT_MS 5000

struct env_boot {
	int port_fd;        /* >= 0: MSB_PORT=fd:N */
	unsigned port;      /* MSB_PORT=vsock:N */
	char hostname[65];
	int sync;
	struct volume vols[MAX_VOLUMES];
	int n_vols;
};

static struct env_boot eb;

/* Parses a decimal number in [lo, hi] that fills the whole string. */
static int parse_num(const char *s, unsigned long lo, unsigned long hi, unsigned long *out)
{
	char *end;
	if (!*s || *s < '0' || *s > '9')
		return -1;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || *end || v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

static void parse_port(const char *v)
{
	unsigned long n;
	eb.port_fd = -1;
	if (!v)
		boot_fatal("MSB_PORT is not set (want vsock:PORT)");
	if (!strncmp(v, "vsock:", 6) && parse_num(v + 6, 1, 0xfffffffeUL, &n) == 0)
		eb.port = (unsigned)n;
	else if (!strncmp(v, "fd:", 3) && parse_num(v + 3, 3, INT_MAX, &n) == 0)
		eb.port_fd = (int)n;
	else
		boot_fatal("MSB_PORT=%s is malformed (want vsock:PORT)", v);
}

static void parse_env(void)
{
	memset(&eb, 0, sizeof eb);
	parse_port(getenv("MSB_PORT"));
	const char *h = getenv("MSB_HOSTNAME");
	if (!h || !*h)
		h = "localhost";
	if (strlen(h) >= sizeof eb.hostname)
		boot_fatal("MSB_HOSTNAME is longer than %zu bytes", sizeof eb.hostname - 1);
	strcpy(eb.hostname, h);
	const char *s = getenv("MSB_SYNC");
	eb.sync = s && !strcmp(s, "1");
	/* Volumes are numbered from 0 without gaps, as the engine writes them. */
	for (int i = 0;; i++) {
		char name[16];
		snprintf(name, sizeof name, "MSB_VOL%d", i);
		const char *arg = getenv(name);
		if (!arg)
			break;
		if (i == MAX_VOLUMES)
			boot_fatal("more than %d volumes (MSB_VOL%d is set)", MAX_VOLUMES, i);
		const char *why = volume_parse(arg, &eb.vols[i]);
		if (why)
			boot_fatal("malformed %s=%s (%s)", name, arg, why);
		eb.n_vols = i + 1;
	}
	int seen = 0;
	for (char **e = environ; *e; e++)
		seen += !strncmp(*e, "MSB_VOL", 7);
	if (seen != eb.n_vols)
		boot_fatal("MSB_VOL variables must be numbered 0 to N-1 without gaps (%d set, %d in order)", seen,
			   eb.n_vols);
}

static void __attribute__((noreturn)) print_and_exit(void)
{
	if (eb.port_fd >= 0)
		printf("port fd:%d\n", eb.port_fd);
	else
		printf("port vsock:%u\n", eb.port);
	printf("hostname %s\nsync %d\n", eb.hostname, eb.sync);
	for (int i = 0; i < eb.n_vols; i++)
		printf("volume %s %s %s\n", eb.vols[i].tag, eb.vols[i].ro ? "ro" : "rw", eb.vols[i].path);
	fflush(stdout);
	exit(0);
}

/* The vsock device is up before init runs us, and the engine listens before the VM starts,
 * so the first connect normally succeeds; retry briefly in case the device is still settling. */
static int connect_host(unsigned port)
{
	struct sockaddr_vm a;
	memset(&a, 0, sizeof a);
	a.svm_family = AF_VSOCK;
	a.svm_cid = VMADDR_CID_HOST;
	a.svm_port = port;
	int64_t end = mono_ms() + CONNECT_MS;
	for (;;) {
		int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0)
			return fd;
		int err = errno;
		if (fd >= 0)
			close(fd);
		if (mono_ms() > end)
			boot_fatal("connecting to the host on vsock port %u: %s", port, strerror(err));
		sleep_ms(5);
	}
}

static void open_vsock_channel(void)
{
	int fd = eb.port_fd;
	if (fd >= 0) {
		struct stat st;
		if (fstat(fd, &st) < 0 || !S_ISSOCK(st.st_mode))
			boot_fatal("MSB_PORT=fd:%d is not an open socket", fd);
		fcntl(fd, F_SETFD, FD_CLOEXEC);
	} else {
		fd = connect_host(eb.port);
	}
	set_nonblock(fd);
	g.chan_in = g.chan_out = fd;
}

/* devtmpfs lacks these; shells use /dev/fd for process substitution. Best effort. */
static void dev_links(void)
{
	static const char *const links[][2] = {
		{"/proc/self/fd", "/dev/fd"},
		{"/proc/self/fd/0", "/dev/stdin"},
		{"/proc/self/fd/1", "/dev/stdout"},
		{"/proc/self/fd/2", "/dev/stderr"},
	};
	for (size_t i = 0; i < sizeof links / sizeof links[0]; i++)
		if (symlink(links[i][0], links[i][1]) < 0 && errno != EEXIST)
			boot_log("symlink %s: %s", links[i][1], strerror(errno));
}

void boot_krun(struct boot_times *t, int dry_run)
{
	fill_std_fds();
	parse_env();
	if (dry_run)
		print_and_exit();
	/* Orphans of our execs come back to us rather than to libkrun's init. */
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	g.sync_after_exec = eb.sync;
	t->modules = now_ns(CLOCK_BOOTTIME);
	net_base(eb.hostname);
	dev_links();
	for (int i = 0; i < eb.n_vols; i++)
		volume_mount(&eb.vols[i], "virtiofs");
	g.rw_fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	t->root = now_ns(CLOCK_BOOTTIME);
	open_vsock_channel();
}
