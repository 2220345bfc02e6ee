/* IDENTITY: what makes a VM restored from a template its own (docs/protocol.md, docs/instant.md).
 *
 * Every VM restored from one template starts with the same memory, so the same kernel RNG
 * state, the template's wall clock and hostname. The host sends fresh entropy, the time and
 * the hostname before anything else runs; this applies them or reports the step that failed
 * (the host then drops the VM rather than hand it out). The sandbox id reaches commands in
 * their environment (MSB_SANDBOX_ID), which costs the guest nothing.
 */
#define _GNU_SOURCE
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/random.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define MAX_ENTROPY 512
#define MAX_NAME 64

static int valid_name(const uint8_t *p, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		uint8_t ch = p[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
		      ch == '_' || ch == '.'))
			return 0;
	}
	return 1;
}

/* Mixes the bytes into the input pool, credits them, and reseeds the CRNG from it at once,
 * so every later read of /dev/urandom or getrandom() depends on them. */
static int add_entropy(const uint8_t *p, uint32_t n, const char **step)
{
	struct {
		int entropy_count;
		int buf_size;
		uint8_t buf[MAX_ENTROPY];
	} info;
	info.entropy_count = (int)n * 8;
	info.buf_size = (int)n;
	memcpy(info.buf, p, n);
	int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
	if (fd < 0) {
		*step = "open /dev/urandom";
		return -1;
	}
	int rc = ioctl(fd, RNDADDENTROPY, &info);
	if (rc < 0)
		*step = "RNDADDENTROPY";
	else if ((rc = ioctl(fd, RNDRESEEDCRNG)) < 0)
		*step = "RNDRESEEDCRNG";
	int err = errno;
	close(fd);
	explicit_bzero(&info, sizeof info);
	errno = err;
	return rc;
}

void identity_on_frame(uint32_t id, struct rd *r)
{
	uint32_t n_ent = 0, n_host = 0;
	const uint8_t *ent = rd_bytes(r, &n_ent);
	uint64_t realtime_ns = rd_u64(r);
	const uint8_t *host = rd_bytes(r, &n_host);
	const char *why = rd_end(r);
	if (!why && (n_ent < 32 || n_ent > MAX_ENTROPY))
		why = "entropy must be 32-512 bytes";
	if (!why && (n_host == 0 || n_host > MAX_NAME || !valid_name(host, n_host)))
		why = "hostname must be 1-64 of [A-Za-z0-9._-]";
	if (!why && !id)
		why = "request id 0";
	if (!why && !g.pid1)
		why = "only the init of a VM takes an identity (elsewhere it would change the host's or container's clock and RNG)";
	if (why) {
		if (id)
			send_result(id, EINVAL, "IDENTITY: %s", why);
		else
			bad_frame(T_IDENTITY, id, why);
		return;
	}
	const char *step = NULL;
	if (add_entropy(ent, n_ent, &step) < 0) {
		send_result(id, errno, "%s: %s", step, strerror(errno));
		return;
	}
	struct timespec ts = {.tv_sec = (time_t)(realtime_ns / 1000000000u), .tv_nsec = (long)(realtime_ns % 1000000000u)};
	if (clock_settime(CLOCK_REALTIME, &ts) < 0) {
		send_result(id, errno, "clock_settime: %s", strerror(errno));
		return;
	}
	if (sethostname((const char *)host, n_host) < 0) {
		send_result(id, errno, "sethostname: %s", strerror(errno));
		return;
	}
	send_result(id, 0, "%s", "");
}
