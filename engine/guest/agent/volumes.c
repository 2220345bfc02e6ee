/* Host directories shared into the guest over virtio-9p (QEMU's -fsdev local).
 *
 * Each volume comes as one kernel parameter, msb.vol=TAG:MODE:PATH: TAG is the virtio-9p
 * mount tag QEMU was given, MODE is ro or rw, PATH the absolute mount point in the guest with
 * every byte outside [A-Za-z0-9/._+@=,~-] written as %XX (the command line is split at
 * spaces). Mount points are created in the new root; a volume that cannot be mounted stops
 * the boot, because a sandbox without the files it was promised would fail later, obscurely.
 */
#define _GNU_SOURCE
#include "agent.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>

/* 9p2000.L is the Linux dialect (full POSIX semantics). cache=mmap keeps reads and writes
 * uncached, so host and guest see each other's changes at once, yet allows mmap (executables,
 * databases). msize: 256 KiB messages instead of 8 KiB make large reads much faster. */
#define OPTIONS "trans=virtio,version=9p2000.L,msize=262144,cache=mmap"

static int hexval(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/* %XX-decodes src into dst (cap bytes). Returns -1 on a bad escape, a NUL or overflow. */
static int decode(const char *src, char *dst, size_t cap)
{
	size_t n = 0;
	for (const char *p = src; *p; p++) {
		int ch = (unsigned char)*p;
		if (ch == '%') {
			int hi = hexval(p[1]), lo = hi < 0 ? -1 : hexval(p[2]);
			if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
				return -1;
			ch = hi * 16 + lo;
			p += 2;
		}
		if (n + 1 >= cap)
			return -1;
		dst[n++] = (char)ch;
	}
	dst[n] = 0;
	return 0;
}

/* mkdir -p in the guest's root (the overlay: new directories land in the writable layer). */
static void mkdir_p(const char *path)
{
	char buf[VOLUME_ARG];
	strcpy(buf, path);
	for (char *p = buf + 1;; p++) {
		if (*p != '/' && *p)
			continue;
		char saved = *p;
		*p = 0;
		if (mkdir(buf, 0755) < 0 && errno != EEXIST)
			boot_fatal("creating the volume mount point %s: %s", buf, strerror(errno));
		if (!saved)
			return;
		*p = saved;
	}
}

void volume_mount(const char *arg)
{
	char tag[64], path[VOLUME_ARG];
	const char *c1 = strchr(arg, ':');
	const char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
	if (!c1 || !c2 || (size_t)(c1 - arg) >= sizeof tag || c1 == arg)
		boot_fatal("malformed msb.vol=%s (want TAG:ro|rw:PATH)", arg);
	memcpy(tag, arg, (size_t)(c1 - arg));
	tag[c1 - arg] = 0;
	int ro = !strncmp(c1 + 1, "ro:", 3);
	if (!ro && strncmp(c1 + 1, "rw:", 3))
		boot_fatal("malformed msb.vol=%s (mode must be ro or rw)", arg);
	if (decode(c2 + 1, path, sizeof path) < 0 || path[0] != '/' || !path[1])
		boot_fatal("malformed msb.vol=%s (path must be absolute and %%XX-encoded)", arg);
	mkdir_p(path);
	unsigned long flags = MS_NOSUID | MS_NODEV | (ro ? MS_RDONLY : 0);
	if (mount(tag, path, "9p", flags, OPTIONS) < 0)
		boot_fatal("mounting volume %s on %s: %s (is 9p over virtio built into the guest kernel?)", tag, path,
			   strerror(errno));
}
