/* Wire encoding: bounds-checked body reader, frame writer, blocking channel writes. */
#define _GNU_SOURCE
#include "agent.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
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

/* The channel is gone: nothing sensible is left to do. In a VM the host has lost us, so power
 * off rather than run unattended; under --serve-stdio the test harness went away. */
static void channel_lost(int err)
{
	if (g.pid1) {
		boot_log("channel write failed: %s; powering off", strerror(err));
		poweroff();
	}
	exec_kill_all();
	_exit(1);
}

/* Blocking full write. The fd may be O_NONBLOCK (it is shared with the reader), so EAGAIN
 * waits in poll. A virtio port whose host side is not connected reports POLLHUP without
 * POLLOUT; back off a little instead of spinning until the host connects. */
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
		if (k < 0 && errno == EAGAIN) {
			struct pollfd pfd = {.fd = g.chan_out, .events = POLLOUT};
			if (poll(&pfd, 1, 1000) == 1 && !(pfd.revents & POLLOUT))
				sleep_ms(10);
			continue;
		}
		channel_lost(k < 0 ? errno : EIO);
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
