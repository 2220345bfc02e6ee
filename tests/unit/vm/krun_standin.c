/*
 * A stand-in libkrun.so for the libkrun tests (tests/unit/vm/test_krun_*.py).
 *
 * Exports the libkrun symbols engine/vm/krun_ffi.py binds, with the real signatures, and
 * appends one JSON line per call to the file named by KRUN_STANDIN_LOG:
 *     {"call": "krun_set_exec", "args": [7, "/.msb/agent", ["a"], ["K=V"]]}
 * A NULL string array is logged as null. Configuration, read at each call:
 *     KRUN_STANDIN_FAIL  name of a call that returns -EINVAL instead of 0
 *     KRUN_STANDIN_EXIT  exit status krun_start_enter ends the process with (default 0)
 *     KRUN_STANDIN_BOOT  set: krun_start_enter emulates the guest instead (krun_standin_guest.c)
 * krun_create_ctx returns context id 7 so the tests see the id passed through.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "krun_standin.h"

#define CTX_ID 7

struct standin_state st;

static void copy_vec(char **dst, const char *const src[])
{
	int i = 0;
	for (; src && src[i] && i < MAX_V - 1; i++)
		dst[i] = strdup(src[i]);
	dst[i] = NULL;
}

static FILE *log_open(void)
{
	const char *path = getenv("KRUN_STANDIN_LOG");
	return path ? fopen(path, "a") : NULL;
}

static void put_str(FILE *f, const char *s)
{
	if (!s) {
		fputs("null", f);
		return;
	}
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static void put_vec(FILE *f, const char *const v[])
{
	if (!v) {
		fputs("null", f);
		return;
	}
	fputc('[', f);
	for (int i = 0; v[i]; i++) {
		if (i)
			fputs(", ", f);
		put_str(f, v[i]);
	}
	fputc(']', f);
}

/* Start a log line: {"call": NAME, "args": [ */
static FILE *begin(const char *name)
{
	FILE *f = log_open();
	if (f) {
		fputs("{\"call\": ", f);
		put_str(f, name);
		fputs(", \"args\": [", f);
	}
	return f;
}

static int32_t end(FILE *f, const char *name)
{
	const char *fail = getenv("KRUN_STANDIN_FAIL");
	if (f) {
		fputs("]}\n", f);
		fclose(f);
	}
	return fail && !strcmp(fail, name) ? -EINVAL : 0;
}

int32_t krun_set_log_level(uint32_t level)
{
	FILE *f = begin(__func__);
	if (f) fprintf(f, "%u", level);
	return end(f, __func__);
}

int32_t krun_create_ctx(void)
{
	FILE *f = begin(__func__);
	int32_t rc = end(f, __func__);
	return rc < 0 ? rc : CTX_ID;
}

int32_t krun_free_ctx(uint32_t ctx_id)
{
	FILE *f = begin(__func__);
	if (f) fprintf(f, "%u", ctx_id);
	return end(f, __func__);
}

int32_t krun_set_vm_config(uint32_t ctx_id, uint8_t num_vcpus, uint32_t ram_mib)
{
	FILE *f = begin(__func__);
	if (f) fprintf(f, "%u, %u, %u", ctx_id, num_vcpus, ram_mib);
	return end(f, __func__);
}

static int32_t ctx_str(const char *name, uint32_t ctx_id, const char *s)
{
	FILE *f = begin(name);
	if (f) {
		fprintf(f, "%u, ", ctx_id);
		put_str(f, s);
	}
	return end(f, name);
}

static int32_t ctx_vec(const char *name, uint32_t ctx_id, const char *const v[])
{
	FILE *f = begin(name);
	if (f) {
		fprintf(f, "%u, ", ctx_id);
		put_vec(f, v);
	}
	return end(f, name);
}

int32_t krun_set_root(uint32_t ctx_id, const char *root_path)
{
	st.root = strdup(root_path);
	return ctx_str(__func__, ctx_id, root_path);
}

int32_t krun_set_workdir(uint32_t ctx_id, const char *workdir_path)
{
	st.workdir = strdup(workdir_path);
	return ctx_str(__func__, ctx_id, workdir_path);
}

int32_t krun_disable_implicit_vsock(uint32_t ctx_id)
{
	FILE *f = begin(__func__);
	if (f) fprintf(f, "%u", ctx_id);
	return end(f, __func__);
}

int32_t krun_add_vsock(uint32_t ctx_id, uint32_t tsi_features)
{
	FILE *f = begin(__func__);
	if (f) fprintf(f, "%u, %u", ctx_id, tsi_features);
	return end(f, __func__);
}

int32_t krun_add_virtiofs(uint32_t ctx_id, const char *c_tag, const char *c_path)
{
	FILE *f = begin(__func__);
	if (f) {
		fprintf(f, "%u, ", ctx_id);
		put_str(f, c_tag);
		fputs(", ", f);
		put_str(f, c_path);
	}
	return end(f, __func__);
}

int32_t krun_add_vsock_port(uint32_t ctx_id, uint32_t port, const char *c_filepath)
{
	st.port = port;
	st.port_path = strdup(c_filepath);
	FILE *f = begin(__func__);
	if (f) {
		fprintf(f, "%u, %u, ", ctx_id, port);
		put_str(f, c_filepath);
	}
	return end(f, __func__);
}

int32_t krun_set_port_map(uint32_t ctx_id, const char *const port_map[])
{
	return ctx_vec(__func__, ctx_id, port_map);
}

int32_t krun_set_rlimits(uint32_t ctx_id, const char *const rlimits[])
{
	copy_vec(st.rlimits, rlimits);
	return ctx_vec(__func__, ctx_id, rlimits);
}

int32_t krun_set_exec(uint32_t ctx_id, const char *exec_path, const char *const argv[],
		      const char *const envp[])
{
	st.exec_path = strdup(exec_path);
	copy_vec(st.argv + 1, argv);
	st.argv[0] = st.exec_path;
	copy_vec(st.envp, envp);
	FILE *f = begin(__func__);
	if (f) {
		fprintf(f, "%u, ", ctx_id);
		put_str(f, exec_path);
		fputs(", ", f);
		put_vec(f, argv);
		fputs(", ", f);
		put_vec(f, envp);
	}
	return end(f, __func__);
}

/* Like the real one, never returns on success: the process ends "with the guest". */
int32_t krun_start_enter(uint32_t ctx_id)
{
	FILE *f = begin(__func__);
	if (f) fprintf(f, "%u", ctx_id);
	int32_t rc = end(f, __func__);
	if (rc < 0)
		return rc;
	if (getenv("KRUN_STANDIN_BOOT"))
		standin_boot();
	const char *code = getenv("KRUN_STANDIN_EXIT");
	_exit(code ? atoi(code) : 0);
}
