/* A stand-in for a model runner, and a process-burst generator, for the fault and soak tests.
 *
 *   vgrunner --model M --mode sleep            wait for a signal (its default action ends it)
 *   vgrunner --model M --mode crash --ms N     after N ms write through NULL: a real SIGSEGV
 *   vgrunner --model M --mode exit:K --ms N    after N ms exit with status K
 *   vgrunner burst N                           fork N children that exit at once, one after
 *                                              the other (thousands of exit events in a burst)
 *
 * Plain C so that thousands of them cost little and a crash is the kernel's own.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static int burst(long n) {
    /* In batches: fork a batch, then reap it (one fork-wait at a time is ten times slower). */
    for (long done = 0; done < n;) {
        long batch = n - done < 256 ? n - done : 256;
        for (long i = 0; i < batch; i++) {
            pid_t child = fork();
            if (child == 0) _exit(0);
            if (child < 0) return 1;
        }
        for (long i = 0; i < batch; i++) wait(NULL);
        done += batch;
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *mode = "sleep";
    long ms = 0;
    if (argc == 3 && strcmp(argv[1], "burst") == 0) return burst(atol(argv[2]));
    for (int i = 1; i + 1 < argc; i++) {
        if (strcmp(argv[i], "--mode") == 0) mode = argv[i + 1];
        if (strcmp(argv[i], "--ms") == 0) ms = atol(argv[i + 1]);
    }
    if (strcmp(mode, "sleep") == 0) {
        for (;;) pause();
    }
    sleep_ms(ms);
    if (strcmp(mode, "crash") == 0) {
        volatile int *null = NULL;
        *null = 1;
    }
    if (strncmp(mode, "exit:", 5) == 0) return atoi(mode + 5);
    fprintf(stderr, "vgrunner: unknown mode %s\n", mode);
    return 64;
}
