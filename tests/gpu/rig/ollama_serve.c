/* A stand-in for `ollama serve` of Ollama 0.30+ (era G) on the GPU machine: installed as
 * /usr/local/bin/ollama and run as `ollama serve`, it maps no GPU library itself and starts
 * `lib/ollama/llama-server` as its runner, with the argv and environment the 0.30 server gives
 * it (docs/ollama.md: process model and runner environment of era G):
 *   LD_LIBRARY_PATH=<lib dir>:<lib dir>/cuda_v13[:<inherited>], OLLAMA_LIBRARY_PATH,
 *   GGML_BACKEND_PATH=<lib dir>/cuda_v13/libggml-cuda.so, the rest inherited (LD_PRELOAD too).
 * The runner's output goes to the server's stderr, as Ollama's does. When the runner exits the
 * server stays (as Ollama's does); SIGTERM stops the runner and then the server.
 *
 * Settings, from the environment: RIG_LIB_DIR (default /usr/local/lib/ollama), RIG_MODEL
 * (the model file), RIG_PORT (the runner's port), RIG_NGL (layers to offload, default 99).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t stopping;
static pid_t runner;

static void on_term(int sig) {
    (void)sig;
    stopping = 1;
    if (runner > 0)
        kill(runner, SIGTERM);
}

static const char *setting(const char *name, const char *fallback) {
    const char *value = getenv(name);
    return value && *value ? value : fallback;
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "serve") != 0) {
        fprintf(stderr, "usage: ollama serve\n");
        return 2;
    }
    const char *lib = setting("RIG_LIB_DIR", "/usr/local/lib/ollama");
    const char *model = setting("RIG_MODEL", "");
    const char *port = setting("RIG_PORT", "18400");
    const char *ngl = setting("RIG_NGL", "99");
    char exe[4096], path[8192], backend[4096];
    const char *inherited = getenv("LD_LIBRARY_PATH");
    snprintf(exe, sizeof exe, "%s/llama-server", lib);
    snprintf(path, sizeof path, "%s:%s/cuda_v13%s%s", lib, lib, inherited ? ":" : "",
             inherited ? inherited : "");
    snprintf(backend, sizeof backend, "%s/cuda_v13/libggml-cuda.so", lib);
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    fprintf(stderr, "level=INFO source=server.go msg=\"starting llama-server\" cmd=\"%s --model %s --port %s\"\n",
            exe, model, port);
    runner = fork();
    if (runner == 0) {
        char libpath[8192];
        snprintf(libpath, sizeof libpath, "%s:%s/cuda_v13", lib, lib);
        setenv("LD_LIBRARY_PATH", path, 1);
        setenv("OLLAMA_LIBRARY_PATH", libpath, 1);
        setenv("GGML_BACKEND_PATH", backend, 1);
        execl(exe, "llama-server", "--model", model, "--port", port, "--host", "127.0.0.1",
              "--no-webui", "--offline", "-c", "512", "-np", "1", "-ngl", ngl, "-lv", "4",
              (char *)NULL);
        perror("exec llama-server");
        _exit(127);
    }
    int status;
    while (!stopping && waitpid(runner, &status, 0) < 0)
        ;
    if (!stopping)
        fprintf(stderr, "level=INFO source=server.go msg=\"llama-server terminated\" exit=%d\n",
                WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    runner = 0;
    while (!stopping)
        pause();
    return 0;
}
