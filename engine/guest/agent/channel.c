/* The channel of a VM: the virtio-serial port the host named (msb.port=). */
#define _GNU_SOURCE
#include "agent.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define WAIT_DEV_MS 5000

/* Finds /sys/class/virtio-ports/<dev>/name == port and opens /dev/<dev>. Returns fd or -1. */
static int try_open_port(const char *port)
{
	DIR *d = opendir("/sys/class/virtio-ports");
	if (!d)
		return -1;
	int fd = -1;
	struct dirent *de;
	while (fd < 0 && (de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		char path[300], name[128];
		snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", de->d_name);
		int nf = open(path, O_RDONLY | O_CLOEXEC);
		if (nf < 0)
			continue;
		ssize_t n = read(nf, name, sizeof name - 1);
		close(nf);
		if (n <= 0)
			continue;
		name[n] = 0;
		name[strcspn(name, "\n")] = 0;
		if (strcmp(name, port))
			continue;
		snprintf(path, sizeof path, "/dev/%s", de->d_name);
		fd = open(path, O_RDWR | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	}
	closedir(d);
	return fd;
}

void open_channel(const char *port)
{
	int64_t end = mono_ms() + WAIT_DEV_MS;
	int fd;
	while ((fd = try_open_port(port)) < 0) {
		if (mono_ms() > end)
			boot_fatal("virtio-serial port named %s not found within %d ms", port, WAIT_DEV_MS);
		sleep_ms(2);
	}
	g.chan_in = g.chan_out = fd;
}
