/* PID 1 boot: pseudo filesystems, kernel modules, overlay root, switch root, network and
 * volumes (net.c, volumes.c), the channel.
 *
 * Any failure here is fatal for the sandbox. It is written to the console (the host shows
 * its tail to the user) and the VM powers off; returning from PID 1 would panic the kernel
 * with a much less useful message.
 */
#define _GNU_SOURCE
#include "agent.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define WAIT_DEV_MS 5000
#define MODDIR "/lib/msb-modules"
#ifndef MODULE_INIT_COMPRESSED_FILE
#define MODULE_INIT_COMPRESSED_FILE 4
#endif

struct cmdline {
	char root[128];
	char upper[128];
	char port[64];
	char hostname[65];
	int sync;
	int net;                             /* msb.net=1: configure eth0 (net.c) */
	char dns[16];                        /* msb.dns=10.0.2.3; empty: no resolver */
	char vols[MAX_VOLUMES][VOLUME_ARG];  /* msb.vol=TAG:ro|rw:PATH (volumes.c) */
	int n_vols;
	int hold;                            /* msb.template=root: wait for RESUME before the root */
};

/* The boot parameters, kept for the RESUME of a template boot. */
static struct cmdline boot_c;

static int kmsg_fd = -1;
static int console_fd = -1;

/* Writes to the kernel log (dmesg, and the console at this priority) and the console itself,
 * so the message survives a quiet loglevel and reaches the host's console tail either way. */
static void vlog_level(int level, const char *fmt, va_list ap)
{
	char msg[768];
	int n = snprintf(msg, sizeof msg, "<%d>msb-agent: ", level);
	int k = vsnprintf(msg + n, sizeof msg - (size_t)n - 1, fmt, ap);
	if (k < 0)
		k = 0;
	size_t len = (size_t)n + ((size_t)k < sizeof msg - (size_t)n - 1 ? (size_t)k : sizeof msg - (size_t)n - 2);
	msg[len++] = '\n';
	if (kmsg_fd >= 0 && write(kmsg_fd, msg, len) < 0) {
		/* nothing else to try */
	}
	int cfd = console_fd >= 0 ? console_fd : (kmsg_fd < 0 ? 2 : -1);
	if (cfd >= 0 && write(cfd, msg + 3, len - 3) < 0) {
		/* nothing else to try */
	}
}

void boot_log(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vlog_level(4, fmt, ap);
	va_end(ap);
}

void poweroff(void)
{
	sync();
	/* Only init may end the VM this way (and a stray call on a host must never reboot it).
	 * libkrun's VMM exits on a guest reboot, as its own init does; QEMU runs -no-reboot. */
	if (getpid() == 1)
		reboot(g.krun ? RB_AUTOBOOT : RB_POWER_OFF);
	/* Not PID 1 (libkrun's init runs us as its child and ends the VM when we exit), or
	 * reboot failed: exiting at least makes the failure visible. */
	_exit(1);
}

static void __attribute__((noreturn, format(printf, 1, 2))) fatal(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vlog_level(2, fmt, ap);
	va_end(ap);
	poweroff();
}

void boot_fatal(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vlog_level(2, fmt, ap);
	va_end(ap);
	poweroff();
}

static void mkdir_p1(const char *path)
{
	if (mkdir(path, 0755) < 0 && errno != EEXIST)
		fatal("mkdir %s: %s", path, strerror(errno));
}

static void mount_or_die(const char *src, const char *dst, const char *type, unsigned long flags, const char *data)
{
	mkdir_p1(dst);
	if (mount(src, dst, type, flags, data) < 0 && !(errno == EBUSY && !(flags & MS_MOVE)))
		fatal("mount %s on %s (%s): %s", src ? src : "-", dst, type ? type : "move", strerror(errno));
}

/* ---- kernel command line ---- */

static void copy_value(char *dst, size_t cap, const char *v)
{
	size_t n = strlen(v);
	if (n >= 2 && v[0] == '"' && v[n - 1] == '"') {
		v++;
		n -= 2;
	}
	if (n >= cap)
		fatal("kernel parameter value too long: %s", v);
	memcpy(dst, v, n);
	dst[n] = 0;
}

/* Applies the msb.* words of buf (split in place). With resume, only the words that may
 * differ between a template and the sandbox restored from it are taken. */
static void parse_words(struct cmdline *c, char *buf, int resume)
{
	char *save = NULL;
	for (char *tok = strtok_r(buf, " \t\n", &save); tok; tok = strtok_r(NULL, " \t\n", &save)) {
		if (!resume && !strncmp(tok, "msb.root=", 9))
			copy_value(c->root, sizeof c->root, tok + 9);
		else if (!resume && !strncmp(tok, "msb.port=", 9))
			copy_value(c->port, sizeof c->port, tok + 9);
		else if (!resume && !strncmp(tok, "msb.template=", 13))
			c->hold = !strcmp(tok + 13, "root") ? HOLD_ROOT : 0;
		else if (!strncmp(tok, "msb.upper=", 10))
			copy_value(c->upper, sizeof c->upper, tok + 10);
		else if (!strncmp(tok, "msb.hostname=", 13))
			copy_value(c->hostname, sizeof c->hostname, tok + 13);
		else if (!strncmp(tok, "msb.sync=", 9))
			c->sync = !strcmp(tok + 9, "1");
		else if (!strncmp(tok, "msb.net=", 8))
			c->net = !strcmp(tok + 8, "1");
		else if (!strncmp(tok, "msb.dns=", 8))
			copy_value(c->dns, sizeof c->dns, tok + 8);
		else if (!strncmp(tok, "msb.vol=", 8)) {
			if (c->n_vols == MAX_VOLUMES)
				fatal("more than %d msb.vol= parameters", MAX_VOLUMES);
			copy_value(c->vols[c->n_vols++], VOLUME_ARG, tok + 8);
		}
	}
}

static void parse_cmdline(struct cmdline *c)
{
	memset(c, 0, sizeof *c);
	strcpy(c->root, "/dev/vda");
	strcpy(c->upper, "tmpfs");
	strcpy(c->port, "msb.0");
	strcpy(c->hostname, "localhost");
	char buf[4096];
	int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
	if (fd >= 0)
		close(fd);
	if (n < 0)
		fatal("read /proc/cmdline: %s", strerror(errno));
	buf[n] = 0;
	parse_words(c, buf, 0);
}

/* ---- modules ---- */

static void load_module(const char *name)
{
	char path[512];
	snprintf(path, sizeof path, MODDIR "/%s", name);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		boot_log("module %s: %s", name, strerror(errno));
		return;
	}
	size_t n = strlen(name);
	int compressed = (n > 3 && !strcmp(name + n - 3, ".xz")) || (n > 4 && !strcmp(name + n - 4, ".zst")) ||
			 (n > 3 && !strcmp(name + n - 3, ".gz"));
	long r = syscall(SYS_finit_module, fd, "", compressed ? MODULE_INIT_COMPRESSED_FILE : 0);
	int err = errno;
	close(fd);
	if (r < 0 && err != EEXIST)
		boot_log("loading module %s: %s%s", name, strerror(err),
			 compressed ? " (store modules uncompressed in the initramfs)" : "");
	unlink(path); /* the initramfs lives in RAM for good; free what is no longer needed */
}

/* Loads MODDIR/order, one file name per line. No order file = everything is built in. */
static void load_modules(void)
{
	FILE *f = fopen(MODDIR "/order", "re");
	if (!f)
		return;
	char line[256];
	while (fgets(line, sizeof line, f)) {
		line[strcspn(line, "\r\n")] = 0;
		char *p = line;
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p && *p != '#' && !strchr(p, '/'))
			load_module(p);
	}
	fclose(f);
}

/* ---- root filesystem ---- */

/* Block devices appear asynchronously once their driver probes; poll with a bound. */
static void wait_for(const char *path, const char *what)
{
	int64_t end = mono_ms() + WAIT_DEV_MS;
	while (access(path, F_OK) < 0) {
		if (mono_ms() > end)
			fatal("%s %s did not appear within %d ms (missing driver or disk?)", what, path, WAIT_DEV_MS);
		sleep_ms(2);
	}
}

static void mount_root(const struct cmdline *c)
{
	wait_for(c->root, "root device");
	mount_or_die(c->root, "/lower", "ext4", MS_RDONLY, "");
	if (!strcmp(c->upper, "tmpfs")) {
		mount_or_die("tmpfs", "/rw", "tmpfs", 0, "mode=0755");
	} else {
		wait_for(c->upper, "writable layer device");
		mount_or_die(c->upper, "/rw", "ext4", MS_NOATIME, "");
	}
	mkdir_p1("/rw/upper");
	mkdir_p1("/rw/work");
	g.rw_fd = open("/rw", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (g.rw_fd < 0)
		fatal("open /rw: %s", strerror(errno));
	mount_or_die("overlay", "/newroot", "overlay", 0, "lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work");
}

/* Moves /dev /proc /sys under the new root and makes it "/" (what switch_root does; the
 * initramfs cannot be pivot_root'ed away). */
static void switch_root(void)
{
	static const char *const moves[] = {"/dev", "/proc", "/sys"};
	for (size_t i = 0; i < sizeof moves / sizeof moves[0]; i++) {
		char dst[64];
		snprintf(dst, sizeof dst, "/newroot%s", moves[i]);
		mount_or_die(moves[i], dst, NULL, MS_MOVE, NULL);
	}
	if (chdir("/newroot") < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 || chdir("/") < 0)
		fatal("switching to the new root: %s", strerror(errno));
}

/* ptys (a private devpts instance, /dev/ptmx pointing into it), /dev/shm, the usual links. */
static void setup_dev(void)
{
	mount_or_die("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620");
	unlink("/dev/ptmx");
	if (symlink("pts/ptmx", "/dev/ptmx") < 0)
		fatal("symlink /dev/ptmx: %s", strerror(errno));
	mount_or_die("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	/* devtmpfs lacks these; shells use /dev/fd for process substitution. Best effort. */
	if (symlink("/proc/self/fd", "/dev/fd") < 0 || symlink("/proc/self/fd/0", "/dev/stdin") < 0 ||
	    symlink("/proc/self/fd/1", "/dev/stdout") < 0 || symlink("/proc/self/fd/2", "/dev/stderr") < 0) {
		/* already there */
	}
}

void fill_std_fds(void)
{
	for (int fd = 0; fd < 3; fd++) {
		if (fcntl(fd, F_GETFD) >= 0)
			continue;
		int n = open("/dev/null", O_RDWR);
		if (n >= 0 && n != fd) {
			dup2(n, fd);
			close(n);
		}
	}
}

/* Root, network and volumes: everything after the kernel modules. */
static void boot_rest(const struct cmdline *c, struct boot_times *t)
{
	mount_root(c);
	switch_root();
	setup_dev();
	t->root = now_ns(CLOCK_BOOTTIME);

	net_base(c->hostname);
	if (c->net)
		net_up(c->dns);
	for (int i = 0; i < c->n_vols; i++) {
		struct volume v;
		const char *why = volume_parse(c->vols[i], &v);
		if (why)
			fatal("malformed msb.vol=%s (%s)", c->vols[i], why);
		volume_mount(&v, "9p");
	}
}

/* A template boot (msb.template=root) stops before the root is mounted, with the channel
 * open and g.held set; the host saves the VM there, and every VM restored from it gets
 * RESUME with its own writable layer and volumes. (Templates of ephemeral sandboxes boot
 * normally: the host saves them after READY.) */
void boot_pid1(struct boot_times *t)
{
	struct cmdline *c = &boot_c;
	mount_or_die("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	fill_std_fds();
	kmsg_fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
	console_fd = open("/dev/console", O_WRONLY | O_CLOEXEC | O_NOCTTY);
	mount_or_die("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount_or_die("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	parse_cmdline(c);
	g.sync_after_exec = c->sync;

	load_modules();
	t->modules = now_ns(CLOCK_BOOTTIME);
	if (c->hold == HOLD_ROOT) {
		open_channel(c->port);
		g.held = HOLD_ROOT;
		return;
	}
	boot_rest(c, t);
	open_channel(c->port);
}

void boot_resume(const uint8_t *params, uint32_t n, struct boot_times *t)
{
	char buf[4096];
	if (g.held == HOLD_ROOT) {
		if (n >= sizeof buf)
			fatal("RESUME parameters longer than %zu bytes", sizeof buf - 1);
		memcpy(buf, params, n);
		buf[n] = 0;
		boot_c.n_vols = 0;
		parse_words(&boot_c, buf, 1);
		g.sync_after_exec = boot_c.sync;
		boot_rest(&boot_c, t);
	}
	g.held = 0;
}

