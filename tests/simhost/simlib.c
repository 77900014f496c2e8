/*
 * simlib.c - the one shared object behind every library of the simulated Ollama host.
 *
 * tests/simhost compiles this file once per test session and installs copies of it under the
 * real names (libvgpu-cuda.so, libcuda.so.575.51.03, libggml-cuda.so, libcudart.so.12, ...),
 * each with its own SONAME, DT_NEEDED entries and RUNPATH, so that the real dynamic loader
 * resolves, maps and reports them exactly as it would the real libraries.
 *
 * What it offers:
 *   simlib_crash()   a write through NULL inside this library: a real, unhandled SIGSEGV whose
 *                    instruction pointer lies in this file, so the kernel logs
 *                    "segfault at 0 ip ... in <this library>[...]".
 *   simlib_path()    the file this copy was loaded from (dladdr of a local symbol).
 *   CUDA/NVML-looking entry points that Ollama's discovery requires (cuInit, cuDeviceGetCount,
 *   ...). They report one device and succeed.
 *
 * Shim behaviour: libvgpu-cuda.so and libvgpu-nvml.so forward like real vGPU shims do: their
 * cuInit() / nvmlInit_v2() dlopen() the real library (the first regular file libcuda.so.X.Y /
 * libnvidia-ml.so.X.Y in the shim's own directory), so a process using the shim maps both,
 * as on real hosts.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int *volatile simlib_null; /* always NULL; volatile so the store below stays a store */
static void *forwarded;

__attribute__((noinline)) void simlib_crash(void) { *simlib_null = 0x5e6f; }

/* Static helpers only: a call to an exported function may bind to another copy of simlib
 * loaded earlier (symbol interposition), and each copy must speak for itself. */
static void simlib_anchor(void) {}

static const char *own_path(void) {
    Dl_info info;
    if (dladdr((void *)simlib_anchor, &info) && info.dli_fname)
        return info.dli_fname;
    return "";
}

const char *simlib_path(void) { return own_path(); }

static const char *base_name(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* A shim copy (libvgpu-<shim>.so) forwards to the real library next to it: the first regular
 * file named <real_prefix><major>.<minor>... in the shim's own (resolved) directory. */
static void forward_to_real(const char *shim, const char *real_prefix) {
    char real[PATH_MAX], dir[PATH_MAX], cand[PATH_MAX * 2];
    size_t n = strlen(real_prefix);
    if (forwarded || !realpath(own_path(), real) || strcmp(base_name(real), shim) != 0)
        return;
    snprintf(dir, sizeof dir, "%s", real);
    *strrchr(dir, '/') = '\0';
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_type != DT_REG || strncmp(e->d_name, real_prefix, n) != 0 ||
            !strchr(e->d_name + n, '.'))
            continue;
        snprintf(cand, sizeof cand, "%s/%s", dir, e->d_name);
        forwarded = dlopen(cand, RTLD_NOW | RTLD_LOCAL);
        break;
    }
    closedir(d);
}

/* SIMLIB_FORWARD_AT_START=1 makes the shims forward when they are loaded (a preloaded
 * forwarding shim of this kind maps the real library before the program asks for it: what
 * glibc then hands out for the real library's SONAME is the real one). A list of shims
 * ("cuda", "nvml", separated by commas) makes only those forward at load. */
static int forwards_at_start(const char *setting, const char *shim) {
    size_t n = strlen(shim);
    if (strcmp(setting, "1") == 0)
        return 1;
    for (const char *at = setting; (at = strstr(at, shim)) != NULL; at += n)
        if ((at == setting || at[-1] == ',') && (at[n] == '\0' || at[n] == ','))
            return 1;
    return 0;
}

__attribute__((constructor)) static void simlib_init(void) {
    const char *at_start = getenv("SIMLIB_FORWARD_AT_START");
    if (!at_start)
        return;
    if (forwards_at_start(at_start, "cuda"))
        forward_to_real("libvgpu-cuda.so", "libcuda.so.");
    if (forwards_at_start(at_start, "nvml"))
        forward_to_real("libvgpu-nvml.so", "libnvidia-ml.so.");
}

__attribute__((destructor)) static void simlib_fini(void) {
    if (forwarded)
        dlclose(forwarded);
}

/* CUDA driver API, the symbols Ollama's discovery requires. CUresult 0 = CUDA_SUCCESS. */
int cuInit(unsigned int flags) {
    (void)flags;
    forward_to_real("libvgpu-cuda.so", "libcuda.so.");
    return 0;
}
int cuDriverGetVersion(int *v) { *v = 12080; return 0; }
int cuDeviceGetCount(int *n) { *n = 1; return 0; }
int cuDeviceGet(int *dev, int ordinal) { *dev = ordinal; return 0; }
int cuDeviceGetAttribute(int *value, int attr, int dev) { (void)attr; (void)dev; *value = 8; return 0; }
int cuDeviceGetUuid(unsigned char uuid[16], int dev) {
    for (int i = 0; i < 16; i++)
        uuid[i] = (unsigned char)(0x07 + 16 * i + dev);
    return 0;
}
int cuDeviceGetName(char *name, int len, int dev) {
    (void)dev;
    snprintf(name, (size_t)len, "NVIDIA A10");
    return 0;
}
int cuCtxCreate_v3(void **ctx, void *params, int n, unsigned int flags, int dev) {
    (void)params; (void)n; (void)flags; (void)dev;
    *ctx = (void *)&forwarded;
    return 0;
}
int cuMemGetInfo_v2(size_t *free_b, size_t *total_b) {
    *total_b = 23727570944ULL;
    *free_b = 23299883008ULL;
    return 0;
}
int cuCtxDestroy(void *ctx) { (void)ctx; return 0; }

/* CUDA runtime and NVML, enough for a process to call something in them. */
int cudaGetDeviceCount(int *n) { *n = 1; return 0; }
int cudaRuntimeGetVersion(int *v) { *v = 12080; return 0; }
int nvmlInit_v2(void) {
    forward_to_real("libvgpu-nvml.so", "libnvidia-ml.so.");
    return 0;
}
int nvmlShutdown(void) { return 0; }
