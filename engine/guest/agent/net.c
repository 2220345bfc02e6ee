/* The guest's network: the hostname and lo (every VM), and eth0 on QEMU's user-mode network,
 * configured with ioctls (no ip/ifconfig: images may have neither).
 *
 * QEMU's user networking (slirp) always uses 10.0.2.0/24: the guest is 10.0.2.15, the gateway
 * 10.0.2.2, the DNS forwarder 10.0.2.3. What the guest may reach beyond it is decided on the
 * host (docs/networking.md), not here.
 */
#define _GNU_SOURCE
#include "agent.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define IFACE "eth0"
#define GUEST_ADDR "10.0.2.15"
#define GUEST_MASK "255.255.255.0"
#define GATEWAY "10.0.2.2"
#define WAIT_IFACE_MS 5000

static void set_sockaddr(struct sockaddr *sa, const char *ip)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)sa;
	memset(sin, 0, sizeof *sin);
	sin->sin_family = AF_INET;
	inet_pton(AF_INET, ip, &sin->sin_addr);
}

static void if_ioctl(int s, unsigned long req, const char *what, const char *ip)
{
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	strcpy(ifr.ifr_name, IFACE);
	if (ip)
		set_sockaddr(&ifr.ifr_addr, ip);
	if (req == SIOCSIFFLAGS) {
		if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
			boot_fatal("reading the flags of " IFACE ": %s", strerror(errno));
		ifr.ifr_flags |= IFF_UP;
	}
	if (ioctl(s, req, &ifr) < 0)
		boot_fatal("%s " IFACE ": %s", what, strerror(errno));
}

/* The NIC's driver (built in, or a module loaded earlier) registers eth0 asynchronously. */
static void wait_for_iface(void)
{
	int64_t end = mono_ms() + WAIT_IFACE_MS;
	while (if_nametoindex(IFACE) == 0) {
		if (mono_ms() > end)
			boot_fatal("network interface " IFACE " did not appear within %d ms "
				   "(no virtio-net driver in the guest kernel?)", WAIT_IFACE_MS);
		sleep_ms(2);
	}
}

static void add_default_route(int s)
{
	struct rtentry rt;
	memset(&rt, 0, sizeof rt);
	set_sockaddr(&rt.rt_dst, "0.0.0.0");
	set_sockaddr(&rt.rt_genmask, "0.0.0.0");
	set_sockaddr(&rt.rt_gateway, GATEWAY);
	rt.rt_flags = RTF_UP | RTF_GATEWAY;
	rt.rt_dev = (char *)IFACE;
	if (ioctl(s, SIOCADDRT, &rt) < 0 && errno != EEXIST)
		boot_fatal("adding the default route via " GATEWAY ": %s", strerror(errno));
}

/* msb owns the guest's resolver configuration, as container runtimes do: whatever the image
 * has (often the build host's resolv.conf, or a symlink into /run) is replaced. */
static void write_resolv_conf(const char *dns)
{
	char text[128];
	struct in_addr ip;
	if (*dns && inet_pton(AF_INET, dns, &ip) != 1)
		boot_fatal("msb.dns=%s is not an IPv4 address", dns);
	int n = *dns ? snprintf(text, sizeof text, "nameserver %s\n", dns)
		     : snprintf(text, sizeof text, "# msb: this sandbox's network scope has no DNS\n");
	if (mkdir("/etc", 0755) < 0 && errno != EEXIST) {
		boot_log("mkdir /etc: %s; no resolv.conf written", strerror(errno));
		return;
	}
	unlink("/etc/resolv.conf");
	int fd = open("/etc/resolv.conf", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0 || write(fd, text, (size_t)n) != n)
		boot_log("writing /etc/resolv.conf: %s", strerror(errno));
	if (fd >= 0)
		close(fd);
}

void net_base(const char *hostname)
{
	if (sethostname(hostname, strlen(hostname)) < 0)
		boot_log("sethostname: %s", strerror(errno));
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0) {
		boot_log("socket: %s", strerror(errno));
		return;
	}
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	strcpy(ifr.ifr_name, "lo");
	if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0 || (ifr.ifr_flags |= IFF_UP, ioctl(s, SIOCSIFFLAGS, &ifr) < 0))
		boot_log("bringing up lo: %s", strerror(errno));
	close(s);
}

void net_up(const char *dns)
{
	wait_for_iface();
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		boot_fatal("socket: %s", strerror(errno));
	if_ioctl(s, SIOCSIFADDR, "setting the address of", GUEST_ADDR);
	if_ioctl(s, SIOCSIFNETMASK, "setting the netmask of", GUEST_MASK);
	if_ioctl(s, SIOCSIFFLAGS, "bringing up", NULL);
	add_default_route(s);
	close(s);
	write_resolv_conf(dns);
}
