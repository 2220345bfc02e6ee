/* msb-netfilter: an LD_PRELOAD shim that keeps a `public` sandbox off the host and its LAN.
 *
 * QEMU's user-mode network (libslirp) turns every guest TCP connection, UDP datagram and
 * ICMP echo into a host socket call: connect() for TCP, sendto() for UDP and for ICMP
 * "ping" sockets. Guest traffic to 10.0.2.2 becomes traffic to the host's 127.0.0.1, and
 * anything else goes wherever the host can reach. QEMU 7.2 has no option to stop that, so
 * this shim, loaded into the QEMU process, wraps those calls and fails them with EACCES
 * when the destination is:
 *
 *   IPv4  0/8 127/8 10/8 172.16/12 192.168/16 100.64/10 169.254/16 224/4 240/4
 *   IPv6  ::/96 (unspecified, loopback, v4-compatible) fc00::/7 fe80::/10 fec0::/10 ff00::/8;
 *         v4-mapped (::ffff:0:0/96), NAT64 (64:ff9b::/96) and 6to4 (2002::/16) addresses
 *         are judged by the IPv4 address inside
 *   any address of the host's own interfaces (getifaddrs, re-read at most once a second)
 *
 * Settings (from the environment, set by engine/vm/netfilter/__init__.py):
 *   MSB_NETFILTER_MODE=deny          deny every destination, DNS too (gVisor's `group` scope:
 *                                    slirp4netns has no "restrict"); default "filter": as above
 *   MSB_NETFILTER_DNS=a,b,...        the host's resolvers (/etc/resolv.conf): port 53 only,
 *                                    because slirp forwards the guest's DNS (10.0.2.3) there
 *   MSB_NETFILTER_UDP_PORTS=p,...    published UDP host ports: a datagram from such a socket
 *                                    may go back to a peer that sent one to it (the reply of
 *                                    a port forward), not to anyone else (in both modes)
 * A malformed variable makes the shim end the process (fail closed, never unfiltered).
 *
 * Under QEMU's seccomp filter (-sandbox on) the wrappers use only socket calls, getifaddrs (a
 * netlink socket) and clock_gettime, which that filter allows. Tests: tests/unit/vm/test_netfilter.py.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_DNS 8
#define MAX_UDP_PORTS 64
#define MAX_PEERS 64
#define MAX_HOST_ADDRS 128
#define MAX_LOGGED 16

struct ip6 { uint8_t b[16]; };

static int (*real_connect)(int, const struct sockaddr *, socklen_t);
static ssize_t (*real_sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
static ssize_t (*real_sendmsg)(int, const struct msghdr *, int);
static int (*real_sendmmsg)(int, struct mmsghdr *, unsigned int, int);
static ssize_t (*real_recvfrom)(int, void *, size_t, int, struct sockaddr *, socklen_t *);

static int deny_all; /* MSB_NETFILTER_MODE=deny */
static struct ip6 dns[MAX_DNS];
static uint16_t udp_ports[MAX_UDP_PORTS];
static int n_dns, n_udp_ports;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct { struct ip6 addr; uint16_t port; } peers[MAX_PEERS];
static int n_peers, next_peer;
static struct ip6 host_addrs[MAX_HOST_ADDRS];
static int n_host_addrs = -1; /* -1: never read, or the last read failed */
static int64_t host_addrs_ms;
static int n_logged;

static void __attribute__((format(printf, 1, 2))) say(const char *fmt, ...)
{
	char msg[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(msg, sizeof msg - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	n = (size_t)n > sizeof msg - 2 ? (int)sizeof msg - 2 : n;
	msg[n++] = '\n';
	if (write(2, msg, (size_t)n) < 0)
		return; /* nowhere else to report */
}

static void __attribute__((noreturn)) die(const char *what, const char *value)
{
	say("msb-netfilter: bad %s entry '%s'; refusing to run unfiltered", what, value);
	_exit(70);
}

/* ---- addresses ---- */

static void v4_to_6(uint32_t v4_be, struct ip6 *out)
{
	memset(out->b, 0, 10);
	out->b[10] = out->b[11] = 0xff;
	memcpy(out->b + 12, &v4_be, 4);
}

static int is_v4_mapped(const struct ip6 *a)
{
	static const uint8_t pfx[12] = {[10] = 0xff, [11] = 0xff};
	return !memcmp(a->b, pfx, 12);
}

/* Parses "1.2.3.4" or "fe80::1" into the v6 form (IPv4 as v4-mapped). */
static int parse_ip(const char *s, struct ip6 *out)
{
	struct in_addr v4;
	if (inet_pton(AF_INET, s, &v4) == 1) {
		v4_to_6(v4.s_addr, out);
		return 0;
	}
	return inet_pton(AF_INET6, s, out->b) == 1 ? 0 : -1;
}

/* Extracts address and port; 0 if sa is an IPv4/IPv6 socket address, -1 otherwise. */
static int ip_of(const struct sockaddr *sa, socklen_t len, struct ip6 *addr, uint16_t *port)
{
	if (!sa || len < (socklen_t)sizeof(sa_family_t))
		return -1;
	if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
		v4_to_6(sin->sin_addr.s_addr, addr);
		*port = ntohs(sin->sin_port);
		return 0;
	}
	if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
		memcpy(addr->b, sin6->sin6_addr.s6_addr, 16);
		*port = ntohs(sin6->sin6_port);
		return 0;
	}
	return -1; /* other families, or too short for the kernel to accept anyway */
}

static const char *v4_reason(const uint8_t *a)
{
	if (a[0] == 0)
		return "'this network' (0/8, the host itself)";
	if (a[0] == 127)
		return "loopback";
	if (a[0] == 10 || (a[0] == 172 && (a[1] & 0xf0) == 16) || (a[0] == 192 && a[1] == 168))
		return "private";
	if (a[0] == 100 && (a[1] & 0xc0) == 64)
		return "shared address space (100.64/10)";
	if (a[0] == 169 && a[1] == 254)
		return "link-local";
	if (a[0] >= 224)
		return "multicast/reserved";
	return NULL;
}

/* Why the address is in a denied range, or NULL. Host addresses are checked separately. */
static const char *range_reason(const struct ip6 *a)
{
	const uint8_t *b = a->b;
	static const uint8_t zero[12];
	static const uint8_t nat64[12] = {0, 0x64, 0xff, 0x9b};
	if (is_v4_mapped(a) || !memcmp(b, nat64, 12))
		return v4_reason(b + 12);
	if (b[0] == 0x20 && b[1] == 0x02)
		return v4_reason(b + 2);
	if (!memcmp(b, zero, 12))
		return "unspecified/loopback (::/96)";
	if ((b[0] & 0xfe) == 0xfc)
		return "unique local (fc00::/7)";
	if (b[0] == 0xfe && (b[1] & 0x80) == 0x80)
		return "link/site-local (fe80::/9)";
	if (b[0] == 0xff)
		return "multicast";
	return NULL;
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Caller holds mu. Re-reads the host's interface addresses at most once a second. */
static void refresh_host_addrs(void)
{
	int64_t now = now_ms();
	if (n_host_addrs >= 0 && now - host_addrs_ms < 1000)
		return;
	struct ifaddrs *ifs;
	if (getifaddrs(&ifs) < 0) {
		n_host_addrs = -1;
		return;
	}
	int n = 0;
	for (struct ifaddrs *i = ifs; i && n < MAX_HOST_ADDRS; i = i->ifa_next) {
		uint16_t port;
		if (i->ifa_addr && ip_of(i->ifa_addr, sizeof(struct sockaddr_in6), &host_addrs[n], &port) == 0)
			n++;
	}
	freeifaddrs(ifs);
	n_host_addrs = n;
	host_addrs_ms = now;
}

/* Fails closed: without the host's address list, every destination counts as the host. */
static const char *host_reason(const struct ip6 *a)
{
	pthread_mutex_lock(&mu);
	refresh_host_addrs();
	const char *why = n_host_addrs < 0 ? "host address list unavailable" : NULL;
	for (int i = 0; !why && i < n_host_addrs; i++)
		if (!memcmp(host_addrs[i].b, a->b, 16))
			why = "an address of this host";
	pthread_mutex_unlock(&mu);
	return why;
}

/* Why a destination is denied, or NULL if it may be reached. */
static const char *denied(const struct ip6 *a, uint16_t port)
{
	if (deny_all)
		return "no outbound access in this network scope";
	if (port == 53)
		for (int i = 0; i < n_dns; i++)
			if (!memcmp(dns[i].b, a->b, 16))
				return NULL;
	const char *why = range_reason(a);
	return why ? why : host_reason(a);
}

/* ---- published UDP ports: replies to their peers ---- */

static int is_udp_forward_socket(int fd)
{
	if (n_udp_ports == 0)
		return 0;
	int type = 0;
	socklen_t tlen = sizeof type;
	struct sockaddr_storage ss;
	socklen_t slen = sizeof ss;
	struct ip6 a;
	uint16_t port;
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) < 0 || type != SOCK_DGRAM ||
	    getsockname(fd, (struct sockaddr *)&ss, &slen) < 0 || ip_of((struct sockaddr *)&ss, slen, &a, &port) < 0)
		return 0;
	for (int i = 0; i < n_udp_ports; i++)
		if (udp_ports[i] == port)
			return 1;
	return 0;
}

/* Whether a peer sent to a published UDP port; with remember, records it if not. */
static int peer_known(const struct ip6 *a, uint16_t port, int remember)
{
	int found = 0;
	pthread_mutex_lock(&mu);
	for (int i = 0; !found && i < n_peers; i++)
		found = peers[i].port == port && !memcmp(peers[i].addr.b, a->b, 16);
	if (!found && remember) {
		peers[next_peer].addr = *a;
		peers[next_peer].port = port;
		next_peer = (next_peer + 1) % MAX_PEERS;
		n_peers += n_peers < MAX_PEERS;
	}
	pthread_mutex_unlock(&mu);
	return found;
}

/* ---- the check every wrapper makes ---- */

static void log_denial(const char *call, const struct ip6 *a, uint16_t port, const char *why)
{
	pthread_mutex_lock(&mu);
	int n = n_logged <= MAX_LOGGED ? ++n_logged : (n_logged = MAX_LOGGED + 2);
	pthread_mutex_unlock(&mu);
	if (n > MAX_LOGGED + 1)
		return;
	if (n == MAX_LOGGED + 1) {
		say("msb-netfilter: further blocked destinations are not logged");
		return;
	}
	char text[INET6_ADDRSTRLEN];
	if (is_v4_mapped(a))
		inet_ntop(AF_INET, a->b + 12, text, sizeof text);
	else
		inet_ntop(AF_INET6, a->b, text, sizeof text);
	say("msb-netfilter: blocked %s to %s port %u (%s)", call, text, port, why);
}

/* 0 if fd may send to sa, else -1 with errno EACCES. */
static int check(const char *call, int fd, const struct sockaddr *sa, socklen_t len)
{
	struct ip6 a;
	uint16_t port;
	if (ip_of(sa, len, &a, &port) < 0)
		return 0;
	const char *why = denied(&a, port);
	if (!why)
		return 0;
	if (fd >= 0 && is_udp_forward_socket(fd) && peer_known(&a, port, 0))
		return 0;
	log_denial(call, &a, port, why);
	errno = EACCES;
	return -1;
}

/* ---- wrappers ---- */

int connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	if (check("connect", -1, sa, len) < 0)
		return -1;
	return real_connect(fd, sa, len);
}

ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *sa, socklen_t len)
{
	if (check("sendto", fd, sa, len) < 0)
		return -1;
	return real_sendto(fd, buf, n, flags, sa, len);
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
	if (msg && check("sendmsg", fd, msg->msg_name, msg->msg_namelen) < 0)
		return -1;
	return real_sendmsg(fd, msg, flags);
}

int sendmmsg(int fd, struct mmsghdr *msgs, unsigned int n, int flags)
{
	for (unsigned int i = 0; msgs && i < n; i++)
		if (check("sendmmsg", fd, msgs[i].msg_hdr.msg_name, msgs[i].msg_hdr.msg_namelen) < 0)
			return -1;
	return real_sendmmsg(fd, msgs, n, flags);
}

ssize_t recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *sa, socklen_t *len)
{
	ssize_t r = real_recvfrom(fd, buf, n, flags, sa, len);
	struct ip6 a;
	uint16_t port;
	if (r >= 0 && n_udp_ports && sa && len && ip_of(sa, *len, &a, &port) == 0 && is_udp_forward_socket(fd))
		peer_known(&a, port, 1);
	return r;
}

/* ---- setup ---- */

static void *need(const char *name)
{
	void *f = dlsym(RTLD_NEXT, name);
	if (!f) {
		say("msb-netfilter: %s not found in libc", name);
		_exit(70);
	}
	return f;
}

static void parse_list(const char *var, int ports)
{
	const char *env = getenv(var);
	if (!env || !*env)
		return;
	char buf[1024];
	if (strlen(env) >= sizeof buf)
		die(var, "(too long)");
	strcpy(buf, env);
	char *save = NULL;
	for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (ports) {
			char *end;
			long p = strtol(tok, &end, 10);
			if (*end || p < 1 || p > 65535 || n_udp_ports == MAX_UDP_PORTS)
				die(var, tok);
			udp_ports[n_udp_ports++] = (uint16_t)p;
		} else if (n_dns == MAX_DNS || parse_ip(tok, &dns[n_dns++]) < 0) {
			die(var, tok);
		}
	}
}

__attribute__((constructor)) static void netfilter_init(void)
{
	real_connect = need("connect");
	real_sendto = need("sendto");
	real_sendmsg = need("sendmsg");
	real_sendmmsg = need("sendmmsg");
	real_recvfrom = need("recvfrom");
	const char *mode = getenv("MSB_NETFILTER_MODE");
	deny_all = mode && !strcmp(mode, "deny");
	if (mode && *mode && !deny_all && strcmp(mode, "filter"))
		die("MSB_NETFILTER_MODE", strlen(mode) < 32 ? mode : "(too long)");
	parse_list("MSB_NETFILTER_DNS", 0);
	parse_list("MSB_NETFILTER_UDP_PORTS", 1);
}
