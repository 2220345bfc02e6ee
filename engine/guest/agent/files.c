/* FILE_READ / FILE_WRITE / FILE_DATA / FILE_CLOSE / FILE_STAT / FILE_LIST.
 *
 * A FILE_READ is streamed one 64 KiB chunk per loop turn (files_step), so a large download
 * does not stall the output of running execs. Writes are applied as FILE_DATA arrives.
 */
#define _GNU_SOURCE
#include "agent.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct xfer {
	int used;
	int writing;
	uint32_t id;
	int fd;
	uint64_t left; /* read: bytes still allowed by max_bytes */
	int err;       /* write: first write error */
};

static struct xfer xfers[MAX_FILES];
static int nreads;

static struct xfer *xfer_new(uint32_t id, int writing)
{
	for (int i = 0; i < MAX_FILES; i++) {
		if (!xfers[i].used) {
			struct xfer *x = &xfers[i];
			memset(x, 0, sizeof *x);
			x->used = 1;
			x->writing = writing;
			x->id = id;
			x->fd = -1;
			nreads += !writing;
			return x;
		}
	}
	return NULL;
}

static struct xfer *xfer_find(uint32_t id, int writing)
{
	for (int i = 0; i < MAX_FILES; i++)
		if (xfers[i].used && xfers[i].id == id && xfers[i].writing == writing)
			return &xfers[i];
	return NULL;
}

static int xfer_slots_full(void)
{
	for (int i = 0; i < MAX_FILES; i++)
		if (!xfers[i].used)
			return 0;
	return 1;
}

static void xfer_free(struct xfer *x)
{
	if (x->fd >= 0)
		close(x->fd);
	nreads -= !x->writing;
	memset(x, 0, sizeof *x);
	x->fd = -1;
}

/* Reads the path argument; answers RESULT itself and returns -1 when it is unusable. */
static int get_path(struct rd *r, uint32_t id, uint8_t type, char *out)
{
	uint32_t n;
	const uint8_t *p = rd_bytes(r, &n);
	const char *why = rd_end(r);
	if (why) {
		bad_frame(type, id, why);
		return -1;
	}
	int err = path_dup(p, n, out, PATH_MAX);
	if (err) {
		send_result(id, err, "invalid path");
		return -1;
	}
	return 0;
}

/* Guards the start of a new transfer: id clash and capacity. */
static struct xfer *start_xfer(uint32_t id, int writing)
{
	if (xfer_find(id, writing)) {
		send_result(id, EEXIST, "transfer id %u already open", id);
		return NULL;
	}
	if (xfer_slots_full()) {
		send_result(id, EMFILE, "too many open file transfers (%d)", MAX_FILES);
		return NULL;
	}
	return xfer_new(id, writing);
}

/* ---- read ---- */

static void on_read(uint32_t id, struct rd *r)
{
	uint64_t max = rd_u64(r);
	char path[PATH_MAX];
	if (get_path(r, id, T_FILE_READ, path) < 0)
		return;
	struct xfer *x = start_xfer(id, 0);
	if (!x)
		return;
	/* O_NONBLOCK: opening or reading a FIFO or a terminal must not hang the agent. */
	x->fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (x->fd < 0) {
		send_result(id, errno, "open %s: %s", path, strerror(errno));
		xfer_free(x);
		return;
	}
	x->left = max;
}

/* One chunk of one read; finishes the transfer on EOF, error or max_bytes. */
static void read_step(struct xfer *x)
{
	if (x->left == 0) {
		/* max_bytes sent: one more byte tells whether the file was longer. */
		char c;
		ssize_t n = read(x->fd, &c, 1);
		if (n > 0)
			send_result(x->id, EFBIG, "file is larger than max_bytes");
		else if (n < 0)
			send_result(x->id, errno, "read: %s", strerror(errno));
		else
			send_result(x->id, 0, "%s", "");
		xfer_free(x);
		return;
	}
	size_t want = x->left < CHUNK ? (size_t)x->left : CHUNK;
	ssize_t n = read(x->fd, data_buf + HDR_LEN, want);
	if (n < 0 && errno == EINTR)
		return;
	if (n > 0) {
		x->left -= (uint64_t)n;
		send_data_frame(T_FILE_DATA, x->id, (size_t)n);
		return;
	}
	if (n < 0)
		send_result(x->id, errno, "read: %s", strerror(errno));
	else
		send_result(x->id, 0, "%s", "");
	xfer_free(x);
}

int files_busy(void)
{
	return nreads > 0;
}

void files_step(void)
{
	for (int i = 0; i < MAX_FILES; i++)
		if (xfers[i].used && !xfers[i].writing)
			read_step(&xfers[i]);
}

/* ---- write ---- */

/* mkdir -p of the parent directories of path, mode 0755. */
static void make_parents(const char *path)
{
	char buf[PATH_MAX];
	size_t n = strlen(path);
	memcpy(buf, path, n + 1);
	for (size_t i = 1; i < n; i++) {
		if (buf[i] != '/')
			continue;
		buf[i] = 0;
		mkdir(buf, 0755); /* errors (EEXIST, ...) surface in the open() that follows */
		buf[i] = '/';
	}
}

static void on_write(uint32_t id, struct rd *r)
{
	uint32_t mode = rd_u32(r);
	uint8_t flags = rd_u8(r);
	char path[PATH_MAX];
	if (get_path(r, id, T_FILE_WRITE, path) < 0)
		return;
	struct xfer *x = start_xfer(id, 1);
	if (!x)
		return;
	if (flags & 2)
		make_parents(path);
	int oflags = O_WRONLY | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | ((flags & 1) ? O_APPEND : O_TRUNC);
	x->fd = open(path, oflags, (mode_t)(mode & 07777));
	if (x->fd < 0) {
		/* Answered now; the data frames and FILE_CLOSE for this id are then ignored. */
		send_result(id, errno, "open %s: %s", path, strerror(errno));
		xfer_free(x);
	}
}

static void on_data(uint32_t id, const uint8_t *p, size_t n)
{
	struct xfer *x = xfer_find(id, 1);
	if (!x || x->err)
		return;
	while (n) {
		ssize_t k = write(x->fd, p, n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			x->err = k < 0 ? errno : EIO;
			return;
		}
		p += k;
		n -= (size_t)k;
	}
}

static void on_close(uint32_t id)
{
	struct xfer *x = xfer_find(id, 1);
	if (!x)
		return;
	int err = x->err;
	/* fsync is meaningless (EINVAL/EROFS) on devices and pseudo files; that is no failure. */
	if (fsync(x->fd) < 0 && errno != EINVAL && errno != EROFS && !err)
		err = errno;
	if (close(x->fd) < 0 && !err)
		err = errno;
	x->fd = -1;
	xfer_free(x);
	send_result(id, err, "%s", err ? strerror(err) : "");
}

/* ---- stat / list ---- */

static int64_t mtime_ns(const struct stat *st)
{
	return (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

static void on_stat(uint32_t id, struct rd *r)
{
	char path[PATH_MAX];
	if (get_path(r, id, T_FILE_STAT, path) < 0)
		return;
	struct stat st;
	if (stat(path, &st) < 0) {
		send_result(id, errno, "stat %s: %s", path, strerror(errno));
		return;
	}
	struct wr w;
	wr_begin(&w, T_STAT_RESULT, id);
	wr_u32(&w, st.st_mode);
	wr_u64(&w, (uint64_t)st.st_size);
	wr_u64(&w, (uint64_t)mtime_ns(&st));
	wr_u32(&w, st.st_uid);
	wr_u32(&w, st.st_gid);
	wr_send(&w);
}

static void on_list(uint32_t id, struct rd *r)
{
	char path[PATH_MAX];
	if (get_path(r, id, T_FILE_LIST, path) < 0)
		return;
	DIR *d = opendir(path);
	if (!d) {
		send_result(id, errno, "opendir %s: %s", path, strerror(errno));
		return;
	}
	struct wr w = {0};
	uint32_t count = 0;
	int err = 0;
	for (;;) {
		errno = 0; /* readdir signals errors only through errno */
		struct dirent *de = readdir(d);
		if (!de) {
			err = errno;
			break;
		}
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		struct stat st;
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue; /* removed since readdir */
		size_t nlen = strlen(de->d_name);
		if (count && wr_body_len(&w) + 4 + nlen + 20 > MAX_BODY) {
			wr_patch_u32(&w, 0, count);
			wr_send(&w);
			count = 0;
		}
		if (!count) {
			wr_begin(&w, T_LIST_RESULT, id);
			wr_u32(&w, 0);
		}
		wr_bytes(&w, de->d_name, nlen);
		wr_u32(&w, st.st_mode);
		wr_u64(&w, (uint64_t)st.st_size);
		wr_u64(&w, (uint64_t)mtime_ns(&st));
		count++;
	}
	closedir(d);
	if (count) {
		wr_patch_u32(&w, 0, count);
		wr_send(&w);
	}
	send_result(id, err, "%s", err ? strerror(err) : "");
}

void files_on_frame(uint8_t type, uint32_t id, struct rd *r)
{
	switch (type) {
	case T_FILE_READ:
		on_read(id, r);
		break;
	case T_FILE_WRITE:
		on_write(id, r);
		break;
	case T_FILE_DATA:
		on_data(id, r->p, r->len);
		break;
	case T_FILE_CLOSE:
		if (rd_end(r))
			bad_frame(type, id, rd_end(r));
		else
			on_close(id);
		break;
	case T_FILE_STAT:
		on_stat(id, r);
		break;
	case T_FILE_LIST:
		on_list(id, r);
		break;
	}
}
