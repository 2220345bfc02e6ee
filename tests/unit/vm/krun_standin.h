/* State shared by the stand-in libkrun (krun_standin.c) and its guest emulation
 * (krun_standin_guest.c). */
#ifndef KRUN_STANDIN_H
#define KRUN_STANDIN_H

#include <stdint.h>

/* Internal to the library: nothing here may clash with the loading process's symbols. */
#pragma GCC visibility push(hidden)

#define MAX_V 64

/* What the configuration calls set, for the guest emulation. */
struct standin_state {
	char *root, *workdir, *exec_path;
	char *argv[MAX_V], *envp[MAX_V], *rlimits[MAX_V];
	uint32_t port;
	char *port_path;
};
extern struct standin_state st;

/* krun_start_enter with KRUN_STANDIN_BOOT: run the configured guest; exits with its status. */
void standin_boot(void) __attribute__((noreturn));

#pragma GCC visibility pop

#endif
