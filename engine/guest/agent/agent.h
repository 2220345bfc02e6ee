/* msb guest agent: shared declarations.
 *
 * The agent is PID 1 of a QEMU sandbox VM, the program libkrun's init runs (--krun), or a
 * plain process with --serve-stdio (gVisor, tests), and speaks the frame protocol of
 * docs/protocol.md over one byte stream. Everything runs in one
 * thread around one epoll loop; nothing here may crash or block forever, because PID 1 dying
 * panics the guest kernel.
 */
#ifndef MSB_AGENT_H
#define MSB_AGENT_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifndef AGENT_VERSION
#define AGENT_VERSION "dev"
#endif

#define PROTO_VERSION 1u
#define MAX_BODY (1u << 20)  /* largest frame body, both directions */
#define HDR_LEN 12u          /* len u32 + type u8 + flags u8 + reserved u16 + id u32 */
#define CHUNK (64u * 1024)   /* output / file data per frame */
#define MAX_EXECS 256        /* concurrent execs; more get RESULT EAGAIN */
#define MAX_FILES 64         /* open file transfers; more get RESULT EMFILE */
#define MAX_PING 4096
#define STDIN_CAP (16u << 20) /* pending stdin per exec before we drop data (no stdin credit) */

enum msg_type {
	/* host -> guest */
	T_EXEC = 0x01,
	T_STDIN = 0x02,
	T_STDIN_EOF = 0x03,
	T_RESIZE = 0x04,
	T_SIGNAL = 0x05,
	T_ACK = 0x06,
	T_FILE_READ = 0x10,
	T_FILE_WRITE = 0x11,
	T_FILE_DATA = 0x12, /* both directions */
	T_FILE_CLOSE = 0x13,
	T_FILE_STAT = 0x14,
	T_FILE_LIST = 0x15,
	T_METRICS = 0x20,
	T_SHUTDOWN = 0x21,
	T_PING = 0x22,
	T_IDENTITY = 0x23,
	T_RESUME = 0x24,
	/* guest -> host */
	T_READY = 0x40,
	T_STARTED = 0x41,
	T_STDOUT = 0x42,
	T_STDERR = 0x43,
	T_EXIT = 0x44,
	T_RESULT = 0x46,
	T_STAT_RESULT = 0x47,
	T_LIST_RESULT = 0x48,
	T_METRICS_RESULT = 0x49,
	T_PONG = 0x4A,
	T_LOG = 0x4B,
	T_HELD = 0x4C,
};

/* ---- process-wide state (agent.c) ---- */
struct agent {
	int pid1;          /* we are init of a QEMU VM: boot, power off at the end */
	int krun;          /* run by libkrun's init (--krun): parameters from the environment */
	int chan_in;       /* channel read side (O_NONBLOCK) */
	int chan_out;      /* channel write side (may be the same fd) */
	int epfd;
	int sigfd;         /* signalfd for SIGCHLD */
	int devnull;       /* O_RDWR /dev/null, given to children without stdin */
	int rw_fd;         /* O_DIRECTORY fd on the writable layer, for statfs/syncfs */
	int sync_after_exec;
	int held;          /* a template boot waits for RESUME (HOLD_ROOT) */
};
enum { HOLD_ROOT = 1 };
extern struct agent g;

/* epoll event data: kind in the low byte, exec slot, generation in the high half. */
enum ev_kind { EV_CHAN = 1, EV_SIG, EV_OUT0, EV_OUT1, EV_IN };
static inline uint64_t ev_data(unsigned kind, unsigned slot, uint32_t gen)
{
	return (uint64_t)kind | ((uint64_t)slot << 8) | ((uint64_t)gen << 32);
}

uint64_t now_ns(int clock);
/* Ends the agent: as PID 1 of a VM it powers off, under libkrun it exits (init then ends the
 * VM with our status), otherwise it exits. */
void agent_exit(int code) __attribute__((noreturn));
int64_t mono_ms(void);
void sleep_ms(unsigned ms);
void set_nonblock(int fd);

/* ---- wire encoding (proto.c) ---- */

/* Bounds-checked reader over one frame body. The first failure latches `err` (a static
 * string) and every later read returns zero, so parsers check once at the end. */
struct rd {
	const uint8_t *p;
	size_t len, off;
	const char *err;
};
void rd_init(struct rd *r, const uint8_t *p, size_t len);
uint8_t rd_u8(struct rd *r);
uint16_t rd_u16(struct rd *r);
uint32_t rd_u32(struct rd *r);
uint64_t rd_u64(struct rd *r);
/* `bytes`: returns a pointer into the body (not NUL-terminated) and its length. */
const uint8_t *rd_bytes(struct rd *r, uint32_t *n);
/* u32 count of a list whose items take at least min_item bytes each (guards allocation). */
uint32_t rd_count(struct rd *r, size_t min_item);
/* NULL if the body was consumed exactly and without error, else the reason. */
const char *rd_end(struct rd *r);

/* Frame writer into the shared output buffer. Overflow latches `err`; wr_send then logs and
 * drops the frame instead of sending a truncated one. */
struct wr {
	uint8_t *buf;
	size_t len; /* bytes written including the header */
	int err;
};
void wr_begin(struct wr *w, uint8_t type, uint32_t id);
void wr_u8(struct wr *w, uint8_t v);
void wr_u16(struct wr *w, uint16_t v);
void wr_u32(struct wr *w, uint32_t v);
void wr_u64(struct wr *w, uint64_t v);
void wr_raw(struct wr *w, const void *p, size_t n);
void wr_bytes(struct wr *w, const void *p, size_t n);
size_t wr_body_len(const struct wr *w);
void wr_patch_u32(struct wr *w, size_t body_off, uint32_t v);
void wr_send(struct wr *w);

/* Buffer of HDR_LEN + CHUNK for data frames: callers read() straight to data_buf + HDR_LEN. */
extern uint8_t data_buf[];
void send_data_frame(uint8_t type, uint32_t id, size_t n);
/* Sends n bytes that are waiting in pipe fd as one frame, moving them with splice() (no copy
 * through user space). Returns -1, having sent nothing, when the channel cannot splice. */
int send_pipe_frame(uint8_t type, uint32_t id, int fd, size_t n);
void send_frame(uint8_t type, uint32_t id, const void *body, size_t n);
void send_result(uint32_t id, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void agent_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int path_dup(const uint8_t *p, uint32_t n, char *out, size_t cap);
/* An invalid frame from the host: LOG it and drop it (agent.c). */
void bad_frame(uint8_t type, uint32_t id, const char *why);

/* ---- boot (boot.c) ---- */
struct boot_times {
	uint64_t init, modules, root;
};
void boot_pid1(struct boot_times *t);
/* RESUME of a held template boot: applies the msb.* words in params over the kernel command
 * line's and mounts the root, network and volumes; then g.held = 0. Fatal on failure, like
 * a boot. */
void boot_resume(const uint8_t *params, uint32_t n, struct boot_times *t);
void boot_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Logs to the console and powers off: a boot step that cannot be completed. */
void boot_fatal(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
/* Waits (bounded) for the virtio-serial port named port and makes it the channel; fatal if
 * it never appears (channel.c). */
void open_channel(const char *port);
/* SHUTDOWN: TERM then KILL every process, sync, power off or exit (shutdown.c). */
void shutdown_now(void) __attribute__((noreturn));
/* Syncs and ends the VM: reboot(2) only as PID 1, else _exit(1) (libkrun's init ends the VM). */
void poweroff(void) __attribute__((noreturn));
/* Makes sure fds 0-2 are open, so every fd opened later is >= 3 (spawn relies on it). */
void fill_std_fds(void);

/* ---- under libkrun (krun.c): init has mounted /dev, /proc, /sys; we read MSB_* ---- */
/* Parses MSB_PORT, MSB_HOSTNAME, MSB_SYNC and MSB_VOLn; with dry_run prints what it parsed
 * and exits, else sets the hostname, mounts the volumes and connects the channel. */
void boot_krun(struct boot_times *t, int dry_run);

/* ---- network (net.c) and volumes (volumes.c), after the switch to the new root ---- */
#define MAX_VOLUMES 16
#define VOLUME_ARG 1024 /* one msb.vol= value: TAG:ro|rw:PATH with PATH %-encoded */
/* Sets the hostname and brings up lo (best effort: failures are logged). */
void net_base(const char *hostname);
/* eth0 = 10.0.2.15/24, default route via 10.0.2.2 (QEMU user networking), and
 * /etc/resolv.conf naming dns (or no resolver when dns is empty). Fatal on failure. */
void net_up(const char *dns);
struct volume {
	char tag[64];
	int ro;
	char path[VOLUME_ARG]; /* decoded */
};
/* Parses TAG:ro|rw:PATH (a msb.vol= or MSB_VOLn value); returns NULL or why it is malformed. */
const char *volume_parse(const char *arg, struct volume *v);
/* Mounts a parsed volume with fstype "9p" (QEMU) or "virtiofs" (libkrun). Fatal on failure. */
void volume_mount(const struct volume *v, const char *fstype);

/* ---- execs (exec.c) ---- */
void exec_on_frame(uint8_t type, uint32_t id, struct rd *r);
void exec_on_event(unsigned kind, unsigned slot, uint32_t gen, uint32_t events);
void exec_reap_all(void);
int exec_timeout_ms(void);
void exec_check_timeouts(void);
/* Signals the process group of every running exec. */
void exec_signal_all(int sig);
void exec_kill_all(void);

/* ---- files (files.c) ---- */
void files_on_frame(uint8_t type, uint32_t id, struct rd *r);
int files_busy(void);
void files_step(void);

/* ---- fresh identity of a restored VM (identity.c) ---- */
/* IDENTITY: host entropy into the kernel RNG and a reseed, the wall clock, the hostname. */
void identity_on_frame(uint32_t id, struct rd *r);

/* ---- metrics (metrics.c) ---- */
void metrics_send(uint32_t id);

#endif
