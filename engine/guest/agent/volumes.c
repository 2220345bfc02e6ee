/* Host directories shared into the guest: over virtio-9p under QEMU (-fsdev local), over
 * virtio-fs under libkrun (krun_add_virtiofs).
 *
 * Each volume comes as TAG:MODE:PATH — the kernel parameter msb.vol= under QEMU, the
 * environment variable MSB_VOLn under libkrun: TAG is the mount tag the VMM was given, MODE
 * is ro or rw, PATH the absolute mount point in the guest with every byte outside
 * [A-Za-z0-9/._+@=,~-] written as %XX (the command line is split at spaces). Mount points are
 * created in the sandbox's root; a volume that cannot be mounted stops the boot, because a
 * sandbox without the files it was promised would fail later, obscurely.
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
#define OPTIONS_9P "trans=virtio,version=9p2000.L,msize=262144,cache=mmap"

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

const char *volume_parse(const char *arg, struct volume *v)
{
	const char *c1 = strchr(arg, ':');
	const char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
	if (!c1 || !c2 || c1 == arg || (size_t)(c1 - arg) >= sizeof v->tag)
		return "want TAG:ro|rw:PATH";
	memcpy(v->tag, arg, (size_t)(c1 - arg));
	v->tag[c1 - arg] = 0;
	v->ro = !strncmp(c1 + 1, "ro:", 3);
	if (!v->ro && strncmp(c1 + 1, "rw:", 3))
		return "mode must be ro or rw";
	if (decode(c2 + 1, v->path, sizeof v->path) < 0 || v->path[0] != '/' || !v->path[1])
		return "path must be absolute and %XX-encoded";
	return NULL;
}

void volume_mount(const struct volume *v, const char *fstype)
{
	int virtiofs = !strcmp(fstype, "virtiofs");
	mkdir_p(v->path);
	unsigned long flags = MS_NOSUID | MS_NODEV | (v->ro ? MS_RDONLY : 0);
	if (mount(v->tag, v->path, fstype, flags, virtiofs ? NULL : OPTIONS_9P) < 0)
		boot_fatal("mounting volume %s on %s: %s (is %s built into the guest kernel?)", v->tag, v->path,
			   strerror(errno), virtiofs ? "virtio-fs" : "9p over virtio");
}
