/* Ending the agent: SHUTDOWN (stop every process, sync, power off) and agent_exit. */
#define _GNU_SOURCE
#include "agent.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

/* Reaps whatever has exited; returns 0 once no child is left. */
static int reap_some(void)
{
	for (;;) {
		pid_t p = waitpid(-1, NULL, WNOHANG);
		if (p > 0)
			continue;
		return !(p < 0 && errno == ECHILD);
	}
}

void agent_exit(int code)
{
	if (g.pid1)
		poweroff();
	exec_kill_all();
	if (g.krun) {
		sync();
		if (getpid() == 1) /* an older libkrun's init exec'd us: we are init */
			poweroff();
	}
	exit(code);
}

void shutdown_now(void)
{
	if (!g.pid1 && !g.krun)
		agent_exit(0);
	/* SIGTERM, a short grace for clean exits, then SIGKILL for the rest. As init of a QEMU VM
	 * that is every process (kill(-1) spares us). Under libkrun it is our execs' process
	 * groups only: the VM ends with us anyway, and kill(-1) must never reach a host's
	 * processes should the agent run outside a VM. */
	if (g.pid1)
		kill(-1, SIGTERM);
	else
		exec_signal_all(SIGTERM);
	int64_t end = mono_ms() + 500;
	while (reap_some() && mono_ms() < end)
		sleep_ms(5);
	if (g.pid1)
		kill(-1, SIGKILL);
	else
		exec_kill_all();
	end = mono_ms() + 200;
	while (reap_some() && mono_ms() < end)
		sleep_ms(5);
	agent_exit(0);
}
