/* Wire encoding: bounds-checked body reader, frame writer, blocking channel writes. */
#define _GNU_SOURCE
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* ---- reader ---- */

void rd_init(struct rd *r, const uint8_t *p, size_t len)
{
	r->p = p;
	r->len = len;
	r->off = 0;
	r->err = NULL;
}

/* Returns a pointer to n bytes, or NULL (and latches err) if they are not there. */
static const uint8_t *rd_take(struct rd *r, size_t n)
{
	if (r->err)
		return NULL;
	if (n > r->len - r->off) {
		r->err = "body too short";
		return NULL;
	}
	const uint8_t *p = r->p + r->off;
	r->off += n;
	return p;
}

uint8_t rd_u8(struct rd *r)
{
	const uint8_t *p = rd_take(r, 1);
	return p ? p[0] : 0;
}

uint16_t rd_u16(struct rd *r)
{
	const uint8_t *p = rd_take(r, 2);
	return p ? (uint16_t)(p[0] << 8 | p[1]) : 0;
}

uint32_t rd_u32(struct rd *r)
{
	const uint8_t *p = rd_take(r, 4);
	return p ? (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3] : 0;
}

uint64_t rd_u64(struct rd *r)
{
	uint64_t hi = rd_u32(r);
	return hi << 32 | rd_u32(r);
}

const uint8_t *rd_bytes(struct rd *r, uint32_t *n)
{
	*n = rd_u32(r);
	const uint8_t *p = rd_take(r, *n);
	if (!p)
		*n = 0;
	return p;
}

uint32_t rd_count(struct rd *r, size_t min_item)
{
	uint32_t n = rd_u32(r);
	if (!r->err && (uint64_t)n * min_item > r->len - r->off) {
		r->err = "list count larger than body";
		return 0;
	}
	return r->err ? 0 : n;
}

const char *rd_end(struct rd *r)
{
	if (r->err)
		return r->err;
	if (r->off != r->len)
		return "trailing bytes in body";
	return NULL;
}

/* ---- writer ---- */

static uint8_t out_buf[HDR_LEN + MAX_BODY];
uint8_t data_buf[HDR_LEN + CHUNK];

static void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = v >> 24;
	p[1] = v >> 16;
	p[2] = v >> 8;
	p[3] = v;
}

static void put_header(uint8_t *p, uint8_t type, uint32_t id, size_t body_len)
{
	put_be32(p, (uint32_t)(8 + body_len));
	p[4] = type;
	p[5] = 0;
	p[6] = 0;
	p[7] = 0;
	put_be32(p + 8, id);
}

void wr_begin(struct wr *w, uint8_t type, uint32_t id)
{
	w->buf = out_buf;
	w->len = HDR_LEN;
	w->err = 0;
	out_buf[4] = type;
	put_be32(out_buf + 8, id);
}

static uint8_t *wr_take(struct wr *w, size_t n)
{
	if (w->err || n > sizeof out_buf - w->len) {
		w->err = 1;
		return NULL;
	}
	uint8_t *p = w->buf + w->len;
	w->len += n;
	return p;
}

void wr_u8(struct wr *w, uint8_t v)
{
	uint8_t *p = wr_take(w, 1);
	if (p)
		p[0] = v;
}

void wr_u16(struct wr *w, uint16_t v)
{
	uint8_t *p = wr_take(w, 2);
	if (p) {
		p[0] = v >> 8;
		p[1] = v;
	}
}

void wr_u32(struct wr *w, uint32_t v)
{
	uint8_t *p = wr_take(w, 4);
	if (p)
		put_be32(p, v);
}

void wr_u64(struct wr *w, uint64_t v)
{
	wr_u32(w, (uint32_t)(v >> 32));
	wr_u32(w, (uint32_t)v);
}

void wr_raw(struct wr *w, const void *src, size_t n)
{
	uint8_t *p = wr_take(w, n);
	if (p && n)
		memcpy(p, src, n);
}

void wr_bytes(struct wr *w, const void *p, size_t n)
{
	if (n > MAX_BODY) {
		w->err = 1;
		return;
	}
	wr_u32(w, (uint32_t)n);
	wr_raw(w, p, n);
}

size_t wr_body_len(const struct wr *w)
{
	return w->len - HDR_LEN;
}

void wr_patch_u32(struct wr *w, size_t body_off, uint32_t v)
{
	if (HDR_LEN + body_off + 4 <= w->len)
		put_be32(w->buf + HDR_LEN + body_off, v);
}

/* ---- channel output ---- */

/* The channel is gone: nothing sensible is left to do. In a VM the host has lost us, so end
 * the VM rather than run unattended; under --serve-stdio the test harness went away. */
static void channel_lost(int err)
{
	if (g.pid1 || g.krun)
		boot_log("channel write failed: %s; ending the VM", strerror(err));
	agent_exit(1);
}

/* Waits until the channel may take more. A virtio port whose host side is not connected
 * reports POLLHUP without POLLOUT: back off instead of spinning until the host connects. */
static void wait_writable(void)
{
	struct pollfd pfd = {.fd = g.chan_out, .events = POLLOUT};
	if (poll(&pfd, 1, 1000) == 1 && !(pfd.revents & POLLOUT))
		sleep_ms(10);
}

/* Blocking full write. The fd may be O_NONBLOCK (it is shared with the reader), so EAGAIN
 * waits in poll. */
static void chan_write_all(const uint8_t *p, size_t n)
{
	while (n) {
		ssize_t k = write(g.chan_out, p, n);
		if (k > 0) {
			p += k;
			n -= (size_t)k;
			continue;
		}
		if (k < 0 && errno == EINTR)
			continue;
		/* 0 is what a virtio port returns if it could not queue the buffer: retry. */
		if (k == 0 || errno == EAGAIN) {
			wait_writable();
			continue;
		}
		channel_lost(errno);
	}
}

void wr_send(struct wr *w)
{
	if (w->err) {
		/* Encoding overflow is an agent bug; report it rather than desync the stream. */
		agent_log("internal: frame type 0x%02x too large, dropped", w->buf[4]);
		return;
	}
	put_be32(w->buf, (uint32_t)(w->len - 4));
	chan_write_all(w->buf, w->len);
}

void send_data_frame(uint8_t type, uint32_t id, size_t n)
{
	put_header(data_buf, type, id, n);
	chan_write_all(data_buf, HDR_LEN + n);
}

/* ---- zero-copy output ----
 *
 * Output pipes are forwarded with splice(): under TCG every byte the guest CPU copies is
 * expensive. The data never goes to the channel straight from the child's pipe, because the
 * virtio console's splice_write is only safe when it empties the pipe it reads: it sizes its
 * scatterlist by the pipe's buffer count and queues it whole, so a partial splice (a child
 * still writing, or less credit than data) leaves unset entries that crash the guest kernel
 * (seen on 6.1). So a frame is assembled in a private relay pipe (header, then the payload
 * spliced pipe-to-pipe) and the relay is always spliced out completely: one virtio buffer
 * per frame, no copy through user space. */

static int relay[2] = {-1, -1};
static int splice_broken; /* the channel cannot splice: read/write from now on */

static int relay_open(void)
{
	if (relay[0] >= 0)
		return 0;
	if (pipe2(relay, O_CLOEXEC | O_NONBLOCK) < 0) {
		splice_broken = 1;
		return -1;
	}
	/* Room for a header plus 64 KiB even when the payload arrives in partial pages. If this
	 * fails the default 64 KiB still works: what does not fit is copied. */
	fcntl(relay[1], F_SETPIPE_SZ, 256 * 1024);
	return 0;
}

/* Moves n bytes from pipe fd to the channel through data_buf. */
static void copy_from_pipe(int fd, size_t n)
{
	while (n) {
		size_t want = n < CHUNK ? n : CHUNK;
		ssize_t k = read(fd, data_buf + HDR_LEN, want);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			/* Cannot happen (the bytes are known to be there and the pipe is only ours);
			 * zeros at least keep the framing intact. */
			agent_log("internal: %zu bytes missing from a pipe; sent zeros", n);
			memset(data_buf + HDR_LEN, 0, want);
			k = (ssize_t)want;
		}
		chan_write_all(data_buf + HDR_LEN, (size_t)k);
		n -= (size_t)k;
	}
}

/* Sends the whole relay content (len bytes) to the channel. */
static void relay_flush(size_t len)
{
	while (len) {
		ssize_t k = splice(relay[0], NULL, g.chan_out, NULL, len, SPLICE_F_MOVE);
		if (k > 0) {
			len -= (size_t)k;
			continue;
		}
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0 && errno == EAGAIN) {
			wait_writable();
			continue;
		}
		if (k < 0 && errno != EINVAL && errno != ENOSYS)
			channel_lost(errno);
		splice_broken = 1;
		if (k == 0) {
			/* A virtio port that could not queue the buffer has consumed it anyway. */
			int left = 0;
			if (ioctl(relay[0], FIONREAD, &left) < 0 || left < 0)
				left = 0;
			if ((size_t)left < len) {
				agent_log("kernel dropped %zu bytes of output; sent zeros", len - (size_t)left);
				memset(data_buf + HDR_LEN, 0, CHUNK);
				for (size_t lost = len - (size_t)left; lost;) {
					size_t z = lost < CHUNK ? lost : CHUNK;
					chan_write_all(data_buf + HDR_LEN, z);
					lost -= z;
				}
				len = (size_t)left;
			}
		}
		copy_from_pipe(relay[0], len);
		return;
	}
}

int send_pipe_frame(uint8_t type, uint32_t id, int fd, size_t n)
{
	if (splice_broken || relay_open() < 0)
		return -1;
	uint8_t hdr[HDR_LEN];
	put_header(hdr, type, id, n);
	/* The relay is empty and a write of less than PIPE_BUF is atomic: all or nothing. */
	if (write(relay[1], hdr, HDR_LEN) != (ssize_t)HDR_LEN)
		return -1;
	size_t moved = 0;
	while (moved < n) {
		ssize_t k = splice(fd, NULL, relay[1], NULL, n - moved, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
		if (k > 0)
			moved += (size_t)k;
		else if (!(k < 0 && errno == EINTR))
			break; /* relay full or no pipe-to-pipe splice: the rest is copied below */
	}
	relay_flush(HDR_LEN + moved);
	copy_from_pipe(fd, n - moved);
	return 0;
}

void send_frame(uint8_t type, uint32_t id, const void *body, size_t n)
{
	struct wr w;
	wr_begin(&w, type, id);
	wr_raw(&w, body, n);
	wr_send(&w);
}

void send_result(uint32_t id, int err, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n >= sizeof msg)
		n = sizeof msg - 1;
	struct wr w;
	wr_begin(&w, T_RESULT, id);
	wr_u32(&w, (uint32_t)err);
	wr_bytes(&w, msg, (size_t)n);
	wr_send(&w);
}

/* LOG frames use their own small buffer so logging never clobbers a frame being built. */
void agent_log(const char *fmt, ...)
{
	uint8_t buf[HDR_LEN + 4 + 1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf((char *)buf + HDR_LEN + 4, sizeof buf - HDR_LEN - 4, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n >= sizeof buf - HDR_LEN - 4)
		n = (int)(sizeof buf - HDR_LEN - 5);
	put_header(buf, T_LOG, 0, 4 + (size_t)n);
	put_be32(buf + HDR_LEN, (uint32_t)n);
	chan_write_all(buf, HDR_LEN + 4 + (size_t)n);
}

/* Copies a protocol path into a C string. Returns 0 or an errno: a NUL inside would silently
 * name another file, so it is refused. */
int path_dup(const uint8_t *p, uint32_t n, char *out, size_t cap)
{
	if (n >= cap)
		return ENAMETOOLONG;
	if (n && memchr(p, 0, n))
		return EINVAL;
	if (n)
		memcpy(out, p, n);
	out[n] = 0;
	return 0;
}
