/* METRICS: CPU from /proc/stat, memory from /proc/meminfo, disk from statfs of the writable
 * layer, user-space process count from /proc. */
#define _GNU_SOURCE
#include "agent.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

/* Reads a small /proc file into buf (NUL-terminated); returns bytes read or -1. */
static ssize_t read_small(int dirfd, const char *path, char *buf, size_t cap)
{
	int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	size_t off = 0;
	while (off < cap - 1) {
		ssize_t n = read(fd, buf + off, cap - 1 - off);
		if (n <= 0)
			break;
		off += (size_t)n;
	}
	close(fd);
	buf[off] = 0;
	return (ssize_t)off;
}

/* Aggregate "cpu" line: user nice system idle iowait irq softirq steal guest guest_nice.
 * guest time is already counted in user/nice, so it is left out of the total. */
static void cpu_ticks(uint64_t *busy, uint64_t *total)
{
	char buf[1024];
	unsigned long long v[8] = {0};
	*busy = *total = 0;
	if (read_small(AT_FDCWD, "/proc/stat", buf, sizeof buf) <= 0)
		return;
	if (sscanf(buf, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
		   &v[7]) < 4)
		return;
	for (int i = 0; i < 8; i++)
		*total += v[i];
	*busy = *total - v[3] - v[4];
}

static uint64_t meminfo_kib(const char *buf, const char *key)
{
	const char *p = strstr(buf, key);
	return p ? strtoull(p + strlen(key), NULL, 10) : 0;
}

/* Processes that are not kernel threads (kthreadd and its children). kthreadd is pid 2 in a VM;
 * under gVisor there is none and pid 2 is an ordinary process, so it is recognised by name. */
static uint32_t count_procs(void)
{
	int procfd = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (procfd < 0)
		return 0;
	DIR *d = fdopendir(procfd);
	if (!d) {
		close(procfd);
		return 0;
	}
	uint32_t n = 0;
	int kthreadd = 0; /* readdir lists pids in ascending order: 2 comes before its children */
	struct dirent *de;
	while ((de = readdir(d))) {
		char *end;
		long pid = strtol(de->d_name, &end, 10);
		if (*end || pid <= 0)
			continue;
		char path[64], buf[512];
		snprintf(path, sizeof path, "%ld/stat", pid);
		if (read_small(procfd, path, buf, sizeof buf) <= 0)
			continue;
		char *p = strrchr(buf, ')');
		char state;
		int ppid;
		if (!p || sscanf(p + 1, " %c %d", &state, &ppid) != 2)
			continue;
		if (pid == 2 && strstr(buf, "(kthreadd)"))
			kthreadd = 1;
		else if (!(kthreadd && ppid == 2))
			n++;
	}
	closedir(d);
	return n;
}

void metrics_send(uint32_t id)
{
	uint64_t busy, total;
	cpu_ticks(&busy, &total);

	char mem[4096];
	uint64_t mem_total = 0, mem_avail = 0;
	if (read_small(AT_FDCWD, "/proc/meminfo", mem, sizeof mem) > 0) {
		mem_total = meminfo_kib(mem, "MemTotal:");
		mem_avail = meminfo_kib(mem, "MemAvailable:");
	}

	uint64_t disk_used = 0, disk_total = 0;
	struct statfs sf;
	if (g.rw_fd >= 0 && fstatfs(g.rw_fd, &sf) == 0) {
		disk_total = (uint64_t)sf.f_blocks * (uint64_t)sf.f_frsize;
		disk_used = (uint64_t)(sf.f_blocks - sf.f_bfree) * (uint64_t)sf.f_frsize;
	}

	long tck = sysconf(_SC_CLK_TCK), ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	struct wr w;
	wr_begin(&w, T_METRICS_RESULT, id);
	wr_u64(&w, busy);
	wr_u64(&w, total);
	wr_u32(&w, tck > 0 ? (uint32_t)tck : 100);
	wr_u32(&w, ncpu > 0 ? (uint32_t)ncpu : 1);
	wr_u64(&w, mem_total);
	wr_u64(&w, mem_avail);
	wr_u64(&w, disk_used);
	wr_u64(&w, disk_total);
	wr_u64(&w, now_ns(CLOCK_BOOTTIME) / 1000000);
	wr_u32(&w, count_procs());
	wr_send(&w);
}
